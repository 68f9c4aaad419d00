"""CLI: render's seed convention and timing line, encode-text parity, plain errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from styleclip.cli import _ProgressPrinter, main, seed_to_z
from styleclip.imaging import img_to_image
from styleclip.models.clip_model import ClipModel, build_small_clip
from styleclip.models.generator_io import load_generator


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "styleclip", *args], capture_output=True, text=True, timeout=300)


def test_render_follows_the_seed_convention(tmp_path, tiny_generator_file, capsys):
    out = tmp_path / "x.png"
    assert main(["render", "--generator", str(tiny_generator_file), "--seed", "7", "--truncation", "0.5",
                 "--out", str(out), "--repeat", "2"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["median_s"] > 0 and line["repeat"] == 2
    g = load_generator(tiny_generator_file)
    z = torch.from_numpy(np.random.RandomState(7).randn(1, g.style_dim).astype(np.float32))
    assert torch.equal(seed_to_z(7, g.style_dim), z)
    with torch.no_grad():
        expected = img_to_image(g(z, truncation=0.5))
    assert np.array_equal(np.asarray(Image.open(out)), expected)


def test_encode_text_matches_full_context_clip(tmp_path, capsys):
    model = build_small_clip(embed_dim=64, image_resolution=32, vision_layers=1, vision_width=64,
                             vision_patch_size=8, transformer_width=64, transformer_heads=1, transformer_layers=2,
                             seed=3)
    ClipModel.from_model(model).save(tmp_path / "clip.pt")
    texts = ["a face", "a photo of a person with long blond hair and round glasses"]
    assert main(["encode-text", "--clip", str(tmp_path / "clip.pt"), "--out", str(tmp_path / "e.npy"), *texts]) == 0
    emb = np.load(tmp_path / "e.npy")
    import clip
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.float().encode_text(clip.tokenize(texts)), dim=-1).numpy()
    assert emb.shape == (2, 64) and emb.dtype == np.float32
    cos = (emb * ref).sum(1)
    assert cos.min() >= 0.9999


@pytest.mark.parametrize("args, message", [
    (["render", "--generator", "missing.pt", "--out", "x.png"], "not found"),
    (["render", "--generator", "no-such-model", "--out", "x.png"], "Unknown model name"),
    (["render", "--generator", "NOTES", "--out", "x.png"], "is not"),
])
def test_bad_input_gives_one_line_and_no_traceback(tmp_path, args, message):
    if args[2] == "NOTES":
        (tmp_path / "notes.pt").write_text("not a checkpoint")
        args = [*args[:2], str(tmp_path / "notes.pt"), *args[3:]]
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and message in result.stderr
    assert result.stderr.startswith("error:")


def test_encode_text_rejects_empty_and_overlong_text(tmp_path):
    model = build_small_clip(embed_dim=64, image_resolution=32, vision_layers=1, vision_width=64,
                             vision_patch_size=8, transformer_width=64, transformer_heads=1, transformer_layers=1)
    ClipModel.from_model(model).save(tmp_path / "clip.pt")
    for text in ("   ", "word " * 100):
        result = run_cli("encode-text", "--clip", str(tmp_path / "clip.pt"), "--out", str(tmp_path / "e.npy"), text)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_progress_eta_keeps_each_stage_clock_when_stages_take_turns(monkeypatch, capsys):
    clock = {"now": 100.0}
    monkeypatch.setattr("styleclip.cli.time.time", lambda: clock["now"])
    printer = _ProgressPrinter()
    for now, done, stage in [(100.0, 0, "relevance"), (101.0, 10, "probe, image 1 of 2"),
                             (110.0, 5, "relevance"), (120.0, 20, "probe, image 1 of 2")]:
        clock["now"] = now
        printer(done, 10 if stage == "relevance" else 40, stage)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("ETA ?")  # no rate yet
    assert lines[2] == "relevance: 5/10 (50%), ETA 10 s"  # 5 done in 10 s, the probe's turn included
    assert lines[3] == "probe, image 1 of 2: 20/40 (50%), ETA 38 s"  # 10 more in 19 s


def test_seed_lists():
    from styleclip.cli import CliError, parse_seeds

    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds(" 9, 2-4 ,3,9") == [9, 2, 3, 4]
    for bad, message in [("5-2", "ends before"), ("a", "not a seed"), ("1,,2", "not a seed"), ("-3", "not a seed"),
                         ("0-20000", "at most"), (f"{2 ** 32}", "go up to")]:
        with pytest.raises(CliError, match=message):
            parse_seeds(bad)


def test_batch_edit_and_mapper_match_single_runs(tmp_path, capsys):
    common = ["--neutral", "face", "--target", "old face"]
    assert main(["edit", "--seeds", "4,1-2", *common, "--out", str(tmp_path / "b" / "s{seed}.png")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["seed"] for line in lines] == [4, 1, 2] and len({line["beta"] for line in lines}) == 1
    assert main(["edit", "--seed", "1", *common, "--out", str(tmp_path / "one.png")]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["beta"] == lines[0]["beta"]
    assert (tmp_path / "b" / "s1.png").read_bytes() == (tmp_path / "one.png").read_bytes()

    mapper = "assets/mappers/toyfaces/smiling.pt"
    assert main(["apply-mapper", "--mapper", mapper, "--seeds", "3-4", "--out", str(tmp_path / "m{seed}.png")]) == 0
    assert [json.loads(line)["seed"] for line in capsys.readouterr().out.splitlines()] == [3, 4]
    assert main(["apply-mapper", "--mapper", mapper, "--seed", "4", "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m4.png").read_bytes() == (tmp_path / "m.png").read_bytes()


def test_a_batch_needs_a_seed_field_in_out(tmp_path, capsys):
    assert main(["edit", "--seeds", "0-1", "--neutral", "face", "--target", "old face",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "put {seed} in --out" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_train_channel_mapper_then_apply_it(tmp_path, capsys):
    """The channel mapper through the CLI: train two steps (then resume to three), apply to a seed batch; the image
    is the Studio's for the same file."""
    from styleclip.studio import Studio

    out = tmp_path / "hat.pt"
    args = ["train-channel-mapper", "--target", "face with a hat", "--out", str(out), "--extra", "16",
            "--id-weight", "0"]
    assert main([*args, "--steps", "2"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["kind"] == "channels" and first["steps"] == 2 and not first["resumed"] and first["extra"] == 16
    assert main([*args, "--steps", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["resumed"]
    assert main(["apply-mapper", "--mapper", str(out), "--seeds", "5-6", "--out", str(tmp_path / "h{seed}.png")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["kind"] for line in lines] == ["channels", "channels"]
    assert lines[0]["channels"] == first["channels"] and lines[0]["text"] == "face with a hat"
    [(_, _, edit)] = Studio().apply_mapper("toyfaces", out, [6], 1.0)
    assert np.abs(np.asarray(Image.open(tmp_path / "h6.png")).astype(int) - edit).max() <= 1
    assert main(["train-channel-mapper", "--target", "face", "--out", str(tmp_path / "x.pt")]) == 2
    assert "are the same" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
