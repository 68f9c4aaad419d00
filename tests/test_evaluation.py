"""Tests of the edit benchmark on fast stand-ins: renderer counterfactuals and the shipped attribute classifier."""

from __future__ import annotations

import json

import pytest
import torch

from styleclip.evaluation import (
    BENCHMARK_EDITS,
    EditFailed,
    EditReport,
    EditSpec,
    evaluate_edits,
    format_report,
    global_directions_edit,
    mapper_paths_in,
    model_source_fn,
)
from styleclip.studio import seed_to_z
from styleclip.toyfaces.attributes import attribute
from styleclip.toyfaces.classifier import DEFAULT_PATH, load_classifier, to_img
from styleclip.toyfaces.renderer import FaceParams, render, set_attribute
from styleclip.toyfaces.z_layout import params_of_z

torch.set_num_threads(1)

SIZE = 64
SEEDS = tuple(range(8))
SPECS = tuple(
    s for s in BENCHMARK_EDITS if s.name in ("smiling", "blond hair", "beard", "purple background", "old")
)

pytestmark = pytest.mark.skipif(not DEFAULT_PATH.exists(), reason="no shipped classifier")


def _params(seed: int) -> FaceParams:
    # The face the embedded generator is distilled to draw for the seed's z (numpy RandomState(seed), 128-d,
    # truncation 1 for toyfaces): a stand-in for its sample.
    return params_of_z(seed_to_z(seed, 128)[0].double().numpy())


def _img(params: FaceParams) -> torch.Tensor:
    return to_img(render(params, SIZE))  # [1, 3, 64, 64]


def _source(seed: int) -> torch.Tensor:
    return _img(_params(seed))


def _counterfactual(spec: EditSpec, seed: int) -> torch.Tensor:
    return _img(set_attribute(_params(seed), spec.attribute, spec.target_values[0]))


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_benchmark_edits_are_valid():
    names = [s.name for s in BENCHMARK_EDITS]
    assert len(names) == len(set(names)) and 8 <= len(names) <= 14
    for spec in BENCHMARK_EDITS:
        assert attribute(spec.attribute).kind == "discrete"
        assert spec.neutral != spec.target
        assert all(v in attribute(spec.attribute).values for v in spec.target_values)


def test_edit_spec_rejects_unknown_values():
    with pytest.raises(ValueError, match="hair_color"):
        EditSpec("x", "hair_color", "turquoise", "face", "face with turquoise hair")
    with pytest.raises(ValueError, match="continuous"):
        EditSpec("x", "face_width", "wide", "face", "wide face")
    with pytest.raises(ValueError, match="unknown attribute"):
        EditSpec("x", "tattoo", "yes", "face", "tattooed face")


def test_counterfactual_edits_succeed_and_preserve(classifier):
    report = evaluate_edits(
        None, classifier, _counterfactual, SPECS, SEEDS, source_fn=_source, label="renderer"
    )
    assert [r.spec.name for r in report.rows] == [s.name for s in SPECS]
    for row in report.rows:
        assert row.attempted + row.skipped_already + row.skipped_hidden == len(SEEDS)
        assert row.attempted > 0 and row.failed == 0
        assert row.success is not None and row.success >= 0.75, row
        assert row.preservation is not None and row.preservation >= 0.9, row
        assert row.continuous_change["face_width"] < 0.1
    assert report.success >= 0.9 and report.preservation >= 0.95
    table = format_report(report)
    assert all(s.name in table for s in SPECS) and "**mean**" in table
    json.dumps(report.to_dict())


def test_identity_edit_has_zero_success_and_full_preservation(classifier):
    report = evaluate_edits(
        None, classifier, lambda spec, seed: _source(seed), SPECS, SEEDS, source_fn=_source
    )
    for row in report.rows:
        assert row.attempted > 0
        assert row.success == 0.0 and row.succeeded == 0
        assert row.preservation == 1.0
        assert row.most_changed == ()
        assert row.misses == (("unchanged", row.attempted),)
        assert row.continuous_change["face_width"] == pytest.approx(0.0, abs=1e-6)
    assert report.success == 0.0 and report.preservation == 1.0


def test_misses_name_the_value_a_wrong_edit_lands_on(classifier):
    spec = next(s for s in BENCHMARK_EDITS if s.name == "blond hair")
    sources = {s: set_attribute(_params(s), "hair_color", "black") for s in SEEDS}

    def edit(spec, seed):  # every even seed turns red, odd seeds are left as they are
        return _img(set_attribute(sources[seed], "hair_color", "red") if seed % 2 == 0 else sources[seed])

    row = evaluate_edits(None, classifier, edit, [spec], SEEDS, source_fn=lambda s: _img(sources[s])).rows[0]
    assert row.success == 0.0 and row.attempted == len(SEEDS)
    assert dict(row.misses) == {"red": len(SEEDS) // 2, "unchanged": len(SEEDS) // 2}
    assert "red 4" in format_report(EditReport((row,), SEEDS, 0.0, row.preservation, {}))


def test_sources_that_already_have_the_target_are_skipped(classifier):
    spec = BENCHMARK_EDITS[0]  # smiling
    assert spec.attribute == "mouth"
    # Even seeds already smile (forced in the source), odd seeds are forced not to.
    forced = {s: set_attribute(_params(s), "mouth", "smiling" if s % 2 == 0 else "frowning") for s in SEEDS}
    calls = []

    def edit(spec, seed):
        calls.append(seed)
        return _img(set_attribute(forced[seed], "mouth", "smiling"))

    report = evaluate_edits(None, classifier, edit, [spec], SEEDS, source_fn=lambda s: _img(forced[s]))
    row = report.rows[0]
    assert row.skipped_already == 4 and row.skipped_hidden == 0 and row.attempted == 4
    assert sorted(calls) == [1, 3, 5, 7]  # edit_fn never runs on skipped seeds
    assert row.success == 1.0


def test_hidden_attribute_is_skipped_and_failures_are_counted(classifier):
    spec = next(s for s in BENCHMARK_EDITS if s.name == "eyes closed")
    seeds = (0, 1, 2, 3)
    sources = {
        s: set_attribute(
            set_attribute(_params(s), "eyes", "open"), "glasses", "sunglasses" if s == 0 else "none"
        )
        for s in seeds
    }

    def edit(spec, seed):
        if seed == 1:
            raise EditFailed("no channel")
        if seed == 2:  # hides the eyes instead of closing them: not a success
            return _img(set_attribute(sources[seed], "glasses", "sunglasses"))
        return _img(set_attribute(sources[seed], "eyes", "closed"))

    row = evaluate_edits(None, classifier, edit, [spec], seeds, source_fn=lambda s: _img(sources[s])).rows[0]
    assert row.skipped_hidden == 1 and row.attempted == 3 and row.failed == 1
    assert row.succeeded == 1 and row.success == pytest.approx(1 / 3)
    assert any("no channel" in n for n in row.notes)
    # preservation over the two edited seeds; the sunglasses one changed glasses and hid eyes / eye colour
    assert row.preservation is not None and row.preservation < 1.0


def test_unsupported_specs_are_skipped(classifier, tmp_path):
    class Only:
        def supports(self, spec):
            return spec.name == "smiling"

        def __call__(self, spec, seed):
            return _counterfactual(spec, seed)

    report = evaluate_edits(None, classifier, Only(), SPECS[:2], SEEDS[:4], source_fn=_source)
    assert not report.rows[0].skipped and report.rows[1].skipped
    assert report.rows[1].success is None and "skipped" in format_report(report)
    (tmp_path / "blond_hair.pt").write_bytes(b"")
    assert mapper_paths_in(tmp_path) == {"blond hair": tmp_path / "blond_hair.pt"}


def test_bad_arguments(classifier):
    with pytest.raises(ValueError, match="seed"):
        evaluate_edits(None, classifier, _counterfactual, SPECS, (), source_fn=_source)
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_edits(None, classifier, _counterfactual, SPECS, (1, 1), source_fn=_source)
    with pytest.raises(ValueError, match="source_fn"):
        evaluate_edits(None, classifier, _counterfactual, SPECS, (1,))
    with pytest.raises(ValueError, match=r"\[1, 3, R, R\]"):
        evaluate_edits(
            None, classifier, lambda spec, seed: _source(seed)[0], SPECS[:1], SEEDS, source_fn=_source
        )


def test_global_directions_edit_edits_the_given_source_code():
    """The edit of a seed, and the same edit applied to another S code passed as the source (an inverted photo)."""
    from styleclip.studio import Studio

    loaded = Studio().model("toyfaces")
    spec = next(s for s in BENCHMARK_EDITS if s.name == "purple background")
    default = global_directions_edit(loaded, alpha=4.1, beta=0.15)
    swapped = global_directions_edit(loaded, alpha=4.1, beta=0.15, source_s=lambda seed: loaded.s_of_seed(seed + 1))
    torch.testing.assert_close(swapped(spec, 3), default(spec, 4))
    assert not torch.allclose(swapped(spec, 3), default(spec, 3))


def test_global_directions_edit_takes_the_models_relevance_metric_unless_told():
    from styleclip.studio import Studio

    loaded = Studio().model("toyfaces")
    spec = next(s for s in BENCHMARK_EDITS if s.name == "smiling")
    default = global_directions_edit(loaded)
    official = global_directions_edit(loaded, relevance_shrinkage=None)
    assert default.engine is loaded.engine()
    assert default.engine.relevance_shrinkage == loaded.bundle.relevance_shrinkage is not None
    assert official.engine.relevance_shrinkage is None and official.engine.stats is default.engine.stats
    assert default.describe(spec) != official.describe(spec)  # other channels pass auto-beta
    assert not torch.allclose(default(spec, 2), official(spec, 2))


def test_heldout_edits_are_valid_and_apart_from_the_benchmark():
    from styleclip.evaluation import HELDOUT_EDITS

    assert len(HELDOUT_EDITS) >= 10
    assert not {(s.attribute, s.target_values) for s in HELDOUT_EDITS} & {
        (s.attribute, s.target_values) for s in BENCHMARK_EDITS}
    assert len({s.name for s in HELDOUT_EDITS}) == len(HELDOUT_EDITS)


def test_optimization_edit_follows_the_engines_space():
    """The benchmark's optimization edit passes its space to the engine: S and W+ runs differ, both edit."""
    from styleclip.evaluation import optimization_edit
    from styleclip.studio import Studio

    loaded = Studio().model("toyfaces")
    spec = next(s for s in BENCHMARK_EDITS if s.name == "purple background")
    edit_s = optimization_edit(loaded, steps=3, l2_lambda=0.0, id_lambda=0.0, space="s")
    edit_w = optimization_edit(loaded, steps=3, l2_lambda=0.0, id_lambda=0.0)
    assert "space s" in edit_s.describe(spec) and "space" not in edit_w.describe(spec)
    img_s, img_w = edit_s(spec, 0), edit_w(spec, 0)
    source = model_source_fn(loaded)(0)
    assert img_s.shape == img_w.shape == source.shape
    assert not torch.allclose(img_s, source, atol=1e-3) and not torch.allclose(img_s, img_w, atol=1e-3)
    with pytest.raises(ValueError, match="space"):
        optimization_edit(loaded, steps=3, space="z")(spec, 0)
    # Without steps the benchmark runs the model's default, as the app and the CLI do.
    assert f"{loaded.bundle.opt_steps} steps" in optimization_edit(loaded).describe(spec)
    # The directional term starts from each edit's own neutral text.
    assert "directional 2 from “face”" in optimization_edit(loaded, dir_lambda=2.0).describe(spec)
