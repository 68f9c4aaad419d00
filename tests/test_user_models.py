"""People's own StyleGAN2 checkpoints as models: add-model, discovery, precompute, edits, the app's picker."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from styleclip import cli
from styleclip.models import model_zoo, registry
from styleclip.models.user_models import SUFFIX, discover


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """An empty models folder, a private bundle table and statistics folder for this test."""
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv(registry.MODELS_ENV, str(folder))
    monkeypatch.setattr(model_zoo, "_BUNDLES", dict(model_zoo._BUNDLES))
    monkeypatch.setattr(model_zoo, "PRECOMPUTED_ROOT", tmp_path / "precomputed")
    return folder


def test_add_model_then_precompute_edit_and_pick_it_in_the_app(models_dir, tiny_generator_file, capsys):
    import app
    from styleclip.studio import Studio

    assert cli.main(["add-model", "--name", "tiny", "--generator", str(tiny_generator_file),
                     "--clip", "toyfaces-clip", "--truncation", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["size"] == 32 and out["n_layers"] == 8 and "precompute --model tiny" in out["next"]
    saved = json.loads((models_dir / f"tiny{SUFFIX}").read_text())
    assert saved == {"name": "tiny", "generator": str(tiny_generator_file.resolve()), "clip": "toyfaces-clip",
                     "truncation": 0.5, "alignment": "center"}
    assert model_zoo.get_bundle("tiny").truncation == 0.5
    assert "tiny" in app.model_choices()

    def listed() -> dict:
        assert cli.main(["models"]) == 0
        return {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}

    assert listed()["tiny"] | {"description": ""} == {"name": "tiny", "description": "", "files_present": True,
                                                      "statistics": False, "builtin": False}

    assert cli.main(["precompute", "--model", "tiny", "--n-stats", "200", "--n-images", "3",
                     "--refine-channels", "4", "--probe-images", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["fs3_rows"] > 0
    assert (model_zoo.PRECOMPUTED_ROOT / "tiny" / "fs3.npy").is_file()
    assert listed()["tiny"]["statistics"] is True and listed()["toyfaces"]["builtin"] is True

    studio = Studio("cpu")
    image, info = studio.global_edit("tiny", 3, "face", "smiling face", 4.1, 0.08)
    assert image.shape == (32, 32, 3) and info["model"] == "tiny" and info["channels"] > 0
    source = studio.model("tiny").render_s(studio.model("tiny").s_of_seed(3))
    assert np.abs(image.astype(int) - source.astype(int)).mean() > 0  # the edit changed the picture


def test_discovery_skips_broken_descriptions_and_keeps_the_rest(models_dir, tiny_generator_file, caplog):
    good = {"name": "good", "generator": str(tiny_generator_file), "clip": "toyfaces-clip"}
    (models_dir / f"good{SUFFIX}").write_text(json.dumps(good))
    (models_dir / f"broken{SUFFIX}").write_text("{not json")
    (models_dir / f"renamed{SUFFIX}").write_text(json.dumps({**good, "name": "other"}))
    (models_dir / f"psi{SUFFIX}").write_text(json.dumps({**good, "name": "psi", "truncation": 3}))
    (models_dir / f"extra{SUFFIX}").write_text(json.dumps({**good, "name": "extra", "pickle": "x"}))
    (models_dir / f"toyfaces{SUFFIX}").write_text(json.dumps({**good, "name": "toyfaces"}))
    with caplog.at_level(logging.WARNING):
        assert [b.name for b in discover()] == ["good"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    for expected in ("broken", "must be 'renamed'", "truncation must be", "unknown field(s) ['pickle']",
                     "'toyfaces' is a built-in model"):
        assert expected in messages, expected
    assert model_zoo.get_bundle("toyfaces").generator == "toyfaces-generator"  # the built-in is untouched
    assert "good" in [b.name for b in model_zoo.list_bundles()]


def test_unknown_names_point_at_add_model_and_moved_files_are_named(models_dir, tiny_generator_file, tmp_path):
    from styleclip.studio import Studio

    with pytest.raises(ValueError, match="add-model"):
        model_zoo.get_bundle("cats")
    moved = tmp_path / "moved.pt"
    moved.write_bytes(tiny_generator_file.read_bytes())
    (models_dir / f"cats{SUFFIX}").write_text(json.dumps({"name": "cats", "generator": str(moved),
                                                          "clip": "toyfaces-clip"}))
    assert model_zoo.get_bundle("cats").generator == str(moved)
    moved.unlink()
    assert "cats" not in [b.name for b in model_zoo.available_bundles()]
    with pytest.raises(FileNotFoundError, match="moved or deleted"):
        Studio("cpu").model("cats")
