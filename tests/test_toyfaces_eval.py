"""Smoke tests of the toyfaces generator and CLIP evaluations on tiny random models (no shipped weights)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from styleclip.models.clip_model import ClipModel, build_small_clip
from styleclip.models.generator import Generator
from styleclip.models.generator_io import save_generator
from styleclip.toyfaces import eval_clip, eval_generator
from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.captions import PROMPT_SETS
from styleclip.toyfaces.classifier import AttributeClassifier, save_classifier, to_img
from styleclip.toyfaces.dataset import labels_array, make_dataset, normals_for, observable_array
from styleclip.toyfaces.eval_generator import (
    evaluate_generator,
    frechet_distance,
    total_variation,
    wasserstein_1d,
)
from styleclip.toyfaces.renderer import labels_of, params_from_normal, render, render_batch
from styleclip.toyfaces.z_layout import params_of_z

from tests.conftest import TINY_CLIP  # noqa: E402

torch.set_num_threads(1)

DISCRETE = [a.name for a in ATTRIBUTES if a.kind == "discrete"]
CONTINUOUS = [a.name for a in ATTRIBUTES if a.kind == "continuous"]


def _in_unit(x) -> bool:
    return x is not None and math.isfinite(x) and 0.0 <= x <= 1.0


@pytest.fixture(scope="module")
def tiny_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(64, style_dim=64, n_mlp=2, channel_max=16).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def fresh_classifier() -> AttributeClassifier:
    torch.manual_seed(0)
    return AttributeClassifier().eval()


# ---------------------------------------------------------------------------------------------- statistics


def test_total_variation_and_wasserstein():
    p = np.array([0.2, 0.3, 0.5])
    assert total_variation(p, p) == 0.0
    assert total_variation([1, 0, 0], [0, 0, 1]) == 1.0
    assert total_variation([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25)
    a = np.random.default_rng(0).normal(size=200)
    assert wasserstein_1d(a, a) == 0.0
    assert wasserstein_1d(a, a + 0.3) == pytest.approx(0.3)
    assert wasserstein_1d([0.0], [0.0, 1.0]) == pytest.approx(0.5)  # unequal sizes
    # A TV of exactly 5/50 from histograms carries round-off; it must still meet the 0.1 bar.
    tv = total_variation(np.bincount([0] * 30 + [1] * 20) / 50, np.bincount([0] * 25 + [1] * 25) / 50)
    assert eval_generator.meets_tv_bar(tv) and not eval_generator.meets_tv_bar(0.1001)
    assert eval_generator.meets_confidence_bar(45 / 50)
    assert not eval_generator.meets_confidence_bar(float("nan"))


def test_frechet_distance_self_shift_and_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))  # correlated features
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = np.full(8, 0.5)
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)  # same covariance
    y = rng.normal(size=(300, 8)) * 2.0
    d = frechet_distance(x, y)
    assert d > 0
    scipy_linalg = pytest.importorskip("scipy.linalg")
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s_x + s_y - 2 * scipy_linalg.sqrtm(s_x @ s_y).real)
    assert d == pytest.approx(ref, rel=1e-6)


def test_classifier_embed_feeds_the_heads(fresh_classifier):
    img = to_img(make_dataset(3, 5, 64, workers=1, use_cache=False)[0])
    h = fresh_classifier.embed(img)
    assert h.shape == (3, fresh_classifier.config["hidden"])
    probs = fresh_classifier.predict(img)
    with torch.inference_mode():  # embed() returns an inference tensor, as predict() does
        torch.testing.assert_close(fresh_classifier.heads["hat"](h).softmax(1), probs["hat"])
    assert "embed.weight" not in fresh_classifier.state_dict()  # state-dict keys unchanged


# ---------------------------------------------------------------------------------------------- generator


def test_evaluate_generator_on_random_models(tiny_generator, fresh_classifier):
    r = evaluate_generator(tiny_generator, fresh_classifier, n=40, seed=3)
    assert r["n"] == 40 and r["paired"] is True  # style_dim 64 >= Z_DIMS_USED
    assert set(r["discrete"]) == set(DISCRETE) and set(r["continuous"]) == set(CONTINUOUS)
    for name, d in r["discrete"].items():
        for key in ("tv", "tv_baseline", "tv_true", "confident", "confident_renders", "agreement"):
            assert _in_unit(d[key]), (name, key, d[key])
    for name, c in r["continuous"].items():
        for key in ("mean_generator", "mean_renders", "wasserstein", "wasserstein_baseline"):
            assert _in_unit(c[key]), (name, key, c[key])  # sigmoid outputs live in [0, 1]
        assert abs(c["mean_diff"]) <= 1
    assert _in_unit(r["all_confident"]) and _in_unit(r["all_confident_renders"])
    fd = r["frechet"]
    assert fd["feature_dim"] == fresh_classifier.config["hidden"]
    assert math.isfinite(fd["generator_vs_renders"]) and fd["generator_vs_renders"] >= 0
    assert math.isfinite(fd["renders_vs_renders"]) and fd["renders_vs_renders"] >= 0
    assert isinstance(r["passed"], bool) and r["passed"] == all(r["checks"].values())
    table = eval_generator.format_table(r)
    assert all(f"| {name} |" in table for name in DISCRETE + CONTINUOUS)
    assert "PASS" in table or "FAIL" in table


class _RenderGenerator(torch.nn.Module):
    """A perfectly distilled generator: G(z) = render(params_of_z(z)), exactly."""

    config = SimpleNamespace(style_dim=64, size=64)

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        params = [params_of_z(row) for row in z.double().numpy()]
        return torch.from_numpy(render_batch(params, 64)).permute(0, 3, 1, 2).float() / 127.5 - 1


class _OracleClassifier:
    """Reads the true labels of known renders by looking their exact pixels up (one-hot, fully confident)."""

    attributes = [(a.name, a.kind, a.num_values) for a in ATTRIBUTES]

    def __init__(self, params_list):
        self.table = {render(p, 64).tobytes(): labels_of(p) for p in params_list}

    def _rows(self, img: torch.Tensor) -> list[dict]:
        u8 = img.add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [self.table[x.tobytes()] for x in u8]  # KeyError: an image the oracle was not told about

    def predict(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = self._rows(img)
        return {
            name: torch.nn.functional.one_hot(torch.tensor([r[name] for r in rows]), k).float()
            if kind == "discrete"
            else torch.tensor([r[name] for r in rows])
            for name, kind, k in self.attributes
        }

    def embed(self, img: torch.Tensor) -> torch.Tensor:
        p = self.predict(img)
        return torch.cat([p[n] if k == "discrete" else p[n][:, None] for n, k, _ in self.attributes], 1)


def test_perfect_generator_and_oracle_classifier():
    n, seed, render_seed, baseline_seed = 40, 11, 21, 22
    z = np.random.RandomState(seed).randn(n, 64).astype(np.float32)  # the documented seed convention
    gen_params = [params_of_z(row) for row in z.astype(np.float64)]
    render_params = [params_from_normal(row) for row in normals_for(n, render_seed)]
    base_params = [params_from_normal(row) for row in normals_for(n, baseline_seed)]
    oracle = _OracleClassifier(gen_params + render_params + base_params)

    r = evaluate_generator(
        _RenderGenerator(), oracle, n, seed, render_seed=render_seed, baseline_seed=baseline_seed, batch=16
    )

    gl, rl, bl = labels_array(gen_params), labels_array(render_params), labels_array(base_params)
    gv, rv = observable_array(gen_params), observable_array(render_params)
    assert r["all_confident"] == 1.0 and r["all_confident_renders"] == 1.0 and r["checks"]["all_confident"]
    for a in ATTRIBUTES:
        if a.kind == "discrete":
            d, k = r["discrete"][a.name], a.num_values
            hist = lambda x: np.bincount(x, minlength=k) / len(x)  # noqa: E731
            assert d["confident"] == 1.0 and d["confident_renders"] == 1.0 and d["agreement"] == 1.0
            assert d["tv"] == pytest.approx(total_variation(hist(gl[a.name]), hist(rl[a.name])))
            assert d["tv_baseline"] == pytest.approx(total_variation(hist(bl[a.name]), hist(rl[a.name])))
            want = total_variation(hist(gl[a.name][gv[a.name]]), hist(rl[a.name][rv[a.name]]))
            assert d["tv_true"] == pytest.approx(want)
        else:
            c = r["continuous"][a.name]
            assert c["mean_diff"] == pytest.approx(float(gl[a.name].mean() - rl[a.name].mean()), abs=1e-6)
            assert c["wasserstein"] == pytest.approx(wasserstein_1d(gl[a.name], rl[a.name]), abs=1e-6)
    fd = r["frechet"]
    assert math.isfinite(fd["generator_vs_renders"]) and math.isfinite(fd["renders_vs_renders"])


def test_eval_generator_cli_json(tmp_path, tiny_generator, fresh_classifier, capsys):
    save_generator(tiny_generator, tmp_path / "g.pt")
    save_classifier(fresh_classifier, tmp_path / "c.pt")
    argv = ["--n", "12", "--generator", str(tmp_path / "g.pt"), "--classifier", str(tmp_path / "c.pt")]
    eval_generator.main(argv + ["--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 12 and set(r["discrete"]) == set(DISCRETE)


# ---------------------------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def tiny_clip() -> ClipModel:
    return ClipModel.from_model(build_small_clip(**TINY_CLIP, seed=0))


def test_evaluate_clip_on_random_model(tiny_clip):
    both = eval_clip.evaluate_clip_prompt_sets(tiny_clip, n=30, seed=5)
    assert tuple(both) == PROMPT_SETS
    for key, r in both.items():
        assert r["prompts"] == key and r["n"] == 30
        assert set(r["attributes"]) == set(DISCRETE)
        for name, a in r["attributes"].items():
            assert _in_unit(a["acc"]), (key, name, a)
            assert 0 < a["n"] <= 30
        assert _in_unit(r["mean_acc"]) and r["min_acc"] <= r["mean_acc"]
        assert isinstance(r["passed"], bool)
    for key in PROMPT_SETS:
        assert eval_clip.evaluate_clip(tiny_clip, n=30, seed=5, prompt_set=key) == both[key]  # same renders
    with pytest.raises(ValueError, match="prompt_set"):
        eval_clip.evaluate_clip(tiny_clip, n=5, prompt_set="heldout")
    table = eval_clip.format_table(*both.values())
    assert all(f"{name} prompts" in table for name in ("train-style", "reworded", "paraphrase"))
    assert all(f"| {name} |" in table for name in DISCRETE)


def test_class_embeddings_are_unit_rows_in_value_order(tiny_clip):
    emb = eval_clip.class_embeddings(tiny_clip, "hat", "reworded")
    assert emb.shape == (3, tiny_clip.embed_dim)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


def test_eval_clip_cli_json(tmp_path, tiny_clip, capsys):
    tiny_clip.save(tmp_path / "clip.pt")
    eval_clip.main(["--n", "10", "--clip", str(tmp_path / "clip.pt"), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert set(r) == set(PROMPT_SETS) and set(r["train"]["attributes"]) == set(DISCRETE)
