"""Tests for styleclip.engines.optimization: schedule, CLIP loss, l2 pull, S space, cancel, progress, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from styleclip.engines.optimization import (
    STAGE,
    OptimizationCancelled,
    lr_schedule,
    optimize,
)
from styleclip.engines.precompute import Cancelled, sample_w
from styleclip.models import model_zoo, registry
from styleclip.models.clip_model import ClipModel, build_small_clip
from styleclip.toyfaces.identity_net import ToyfacesIdentity
from tests.conftest import make_tiny_generator

torch.set_num_threads(1)

TEXT = "a smiling face with red hair"


@pytest.fixture(scope="module")
def generator():
    return make_tiny_generator(size=32)


@pytest.fixture(scope="module")
def clip_model():
    model = build_small_clip(embed_dim=64, image_resolution=16, vision_layers=1, vision_width=64,
                             vision_patch_size=8, transformer_width=64, transformer_heads=1,
                             transformer_layers=1, seed=0)
    return ClipModel.from_model(model)


def clip_loss_of(clip_model, img):
    with torch.no_grad():
        return float(1 - (clip_model.encode_image(img) * clip_model.encode_text([TEXT])).sum(-1).mean())


def test_lr_schedule_matches_the_official_formula():
    assert lr_schedule(0.0, 0.1) == 0.0  # the first step does not move
    assert lr_schedule(0.05, 0.1) == pytest.approx(0.1)
    assert lr_schedule(0.5, 0.1) == pytest.approx(0.1)
    assert lr_schedule(0.875, 0.1) == pytest.approx(0.1 * (0.5 - 0.5 * math.cos(0.5 * math.pi)))
    assert lr_schedule(0.025, 0.1) == pytest.approx(0.05)
    assert lr_schedule(0.99, 0.1) < 0.001


def test_optimization_lowers_clip_loss_with_progress_and_previews(generator, clip_model):
    calls, previews = [], []
    params_before = {k: v.clone() for k, v in generator.state_dict().items()}
    result = optimize(generator, clip_model, TEXT, seed=3, truncation=1.0, steps=20, lr=0.1, l2_lambda=0.0,
                      progress=lambda d, t, s: calls.append((d, t, s)), preview_every=5,
                      on_preview=lambda step, img: previews.append((step, tuple(img.shape))))
    # Early exit: CLIP sees 16 px, so the loss renders at 16 while the result is full size.
    assert result.loss_resolution == 16 and result.img.shape == (1, 3, 32, 32)
    assert result.w_plus.shape == (1, generator.n_latent, generator.style_dim) and result.s is None
    assert len(result.history) == 20 == result.steps_done
    start, end = result.history[0].clip_loss, result.history[-1].clip_loss
    assert end < start - 0.02, (start, end)
    assert [c[:2] for c in calls] == [(i, 20) for i in range(1, 21)]
    assert all(s.startswith(f"{STAGE}: loss ") and all(part in s for part in ("clip", "l2", "id"))
               for _, _, s in calls)
    assert previews == [(5, (1, 3, 32, 32)), (10, (1, 3, 32, 32)), (15, (1, 3, 32, 32)), (20, (1, 3, 32, 32))]
    # The shared generator is untouched and holds no gradients.
    assert all(torch.equal(v, params_before[k]) for k, v in generator.state_dict().items())
    assert all(p.grad is None for p in generator.parameters())
    # The reported final loss is that of the returned image.
    assert result.final_clip_loss == pytest.approx(clip_loss_of(clip_model, result.img), abs=1e-5)


def test_clip_views_average_clip_over_shifted_copies_and_stay_deterministic(generator, clip_model):
    from styleclip.engines.optimization import _views

    img = torch.rand(2, 3, 32, 32) * 2 - 1
    views = _views(img, 3, torch.Generator().manual_seed(0))
    assert views.shape == (6, 3, 32, 32) and torch.equal(views[:2], img)
    assert not torch.allclose(views[2:4], img, atol=0.05)  # shifted and noised copies
    assert torch.equal(_views(img, 1, torch.Generator()), img)
    one = optimize(generator, clip_model, TEXT, seed=3, truncation=1.0, steps=6, l2_lambda=0.0)
    three = optimize(generator, clip_model, TEXT, seed=3, truncation=1.0, steps=6, l2_lambda=0.0, clip_views=3)
    again = optimize(generator, clip_model, TEXT, seed=3, truncation=1.0, steps=6, l2_lambda=0.0, clip_views=3)
    assert torch.equal(three.w_plus, again.w_plus) and not torch.equal(three.w_plus, one.w_plus)
    # The history's CLIP term is the mean over the views: the first step (lr 0) is the start latent's.
    with torch.no_grad():
        start = generator.synthesis_w_plus(_start_w_plus(generator, 3), until_resolution=16)
        expected = 1 - (clip_model.encode_image(_views(start, 3, torch.Generator().manual_seed(3)))
                        @ clip_model.encode_text([TEXT]).t()).mean()
    assert three.history[0].clip_loss == pytest.approx(float(expected), abs=1e-5)


def _start_w_plus(generator, seed):
    from styleclip.engines.optimization import _initial_w_plus

    return _initial_w_plus(generator, None, seed, 1.0)


def test_large_l2_lambda_keeps_w_plus_close(generator, clip_model):
    z = torch.randn(1, generator.style_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        w0 = generator.z_to_w_plus(z)
    free = optimize(generator, clip_model, TEXT, w0, steps=12, l2_lambda=0.0)
    tied = optimize(generator, clip_model, TEXT, w0, steps=12, l2_lambda=5.0)
    d_free = float((free.w_plus - w0).square().sum())
    d_tied = float((tied.w_plus - w0).square().sum())
    assert d_tied < 0.25 * d_free, (d_tied, d_free)
    assert tied.history[-1].l2_loss > 0 and free.history[-1].l2_loss > 0
    with torch.no_grad():
        assert torch.equal(w0, generator.z_to_w_plus(z))  # the caller's start latent is not modified


def test_cancel_keeps_the_latest_latent(generator, clip_model):
    polls = []

    def stop():
        polls.append(1)
        return len(polls) > 4

    with pytest.raises(OptimizationCancelled, match="after 4 of 20") as exc:
        optimize(generator, clip_model, TEXT, seed=0, steps=20, should_stop=stop)
    assert isinstance(exc.value, Cancelled)
    partial = exc.value.result
    assert partial.steps_done == 4 and len(partial.history) == 4
    assert partial.img.shape == (1, 3, 32, 32)
    # Same start and steps as an uncancelled 20-step run's first 4 steps → the same latent.
    full = optimize(generator, clip_model, TEXT, seed=0, steps=20, should_stop=lambda: False)
    assert full.steps_done == 20
    assert partial.history == full.history[:4]


def test_s_space_moves_only_conv_styles(generator, clip_model):
    # Full-resolution loss, so every conv layer sees a gradient (with the early exit at 16 px the 32 px layers
    # would not move).
    result = optimize(generator, clip_model, TEXT, seed=5, steps=8, l2_lambda=0.0, space="s",
                      loss_resolution=generator.size)
    assert result.w_plus is None and result.space == "s"
    with torch.no_grad():
        s0 = generator.w_plus_to_s(generator.w_to_w_plus(sample_w(generator, 1, seed=5, truncation=0.7)))
    for layer, s, ref in zip(generator.style_layers, result.s, s0, strict=True):
        moved = not torch.allclose(s, ref, atol=1e-6)
        assert moved != layer.is_torgb, layer.name


def test_s_space_can_start_from_an_s_code_without_w_plus_preimage(generator, clip_model):
    with torch.no_grad():
        s_base = generator.w_plus_to_s(generator.w_to_w_plus(sample_w(generator, 1, seed=5, truncation=0.7)))
    torch.manual_seed(0)
    s_start = [s + 0.3 * torch.randn_like(s) for s in s_base]  # off the W+ image, like an S-refined inversion
    result = optimize(generator, clip_model, TEXT, steps=4, l2_lambda=0.0, space="s", s_0=s_start,
                      loss_resolution=generator.size)
    for layer, s, ref in zip(generator.style_layers, result.s, s_start, strict=True):
        assert torch.allclose(s, ref, atol=1e-6) == layer.is_torgb, layer.name  # ToRGB kept from s_0
    with pytest.raises(ValueError, match="needs space='s'"):
        optimize(generator, clip_model, TEXT, steps=1, s_0=s_start)
    with pytest.raises(ValueError, match="s_0 must be"):
        optimize(generator, clip_model, TEXT, steps=1, space="s", s_0=s_start[:-1])


def test_identity_term(generator, clip_model):
    torch.manual_seed(0)
    ident = ToyfacesIdentity(channels=(8, 8, 16, 16), hidden=16, embed_dim=12).requires_grad_(False)
    result = optimize(generator, clip_model, TEXT, seed=2, steps=6, id_lambda=0.5, identity=ident)
    assert result.history[0].id_loss == pytest.approx(0.0, abs=1e-5)  # step 1 renders the start latent
    assert result.history[-1].id_loss > 0
    assert all(p.grad is None for p in ident.parameters())
    with pytest.raises(ValueError, match="no identity model"):
        optimize(generator, clip_model, TEXT, seed=2, steps=2, id_lambda=0.1)


def test_directional_loss_is_a_cosine_with_a_bounded_gradient_at_the_source():
    from styleclip.engines.clip_losses import directional_loss

    change = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 0.0]]), dim=-1)
    source = torch.tensor([[0.2, -0.1, 0.5]])
    assert float(directional_loss(source + 0.5 * change, source, change)) == pytest.approx(0.0, abs=1e-6)
    assert float(directional_loss(source - 0.5 * change, source, change)) == pytest.approx(2.0)
    ortho = torch.tensor([[0.0, 0.0, 0.7]])
    assert float(directional_loss(source + ortho, source, change)) == pytest.approx(1.0)
    # At the source (no change yet) the loss is 1 and its gradient finite: 1 / min_norm along the text change.
    edit = source.clone().requires_grad_(True)
    loss = directional_loss(edit, source, change, min_norm=0.1).sum()
    (grad,) = torch.autograd.grad(loss, edit)
    assert loss.item() == pytest.approx(1.0)
    torch.testing.assert_close(grad, -change / 0.1)


def test_directional_term_in_optimization(generator, clip_model):
    plain = optimize(generator, clip_model, TEXT, seed=4, steps=12, l2_lambda=0.0)
    assert all(h.dir_loss == 0.0 for h in plain.history) and "dir" not in plain.history[-1].describe()
    result = optimize(generator, clip_model, TEXT, seed=4, steps=12, l2_lambda=0.0, dir_lambda=2.0,
                      neutral="a photo")
    dirs = [h.dir_loss for h in result.history]
    assert dirs[0] == pytest.approx(1.0)  # step 1 renders the start: no change yet
    assert dirs[-1] < dirs[0] - 0.05 and all(math.isfinite(d) for d in dirs), dirs
    assert result.history[-1].loss == pytest.approx(
        result.history[-1].clip_loss + 2.0 * dirs[-1], abs=1e-5)  # l2 weight 0, no identity term
    assert "dir " in result.history[-1].describe()
    with pytest.raises(ValueError, match="dir_lambda"):
        optimize(generator, clip_model, TEXT, seed=4, steps=2, dir_lambda=-1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps"),
    (dict(lr=-1.0), "lr"),
    (dict(space="z"), "space"),
    (dict(seed=-1), "seed"),
    (dict(loss_resolution=12), "loss_resolution"),
    (dict(w_plus_0=torch.zeros(1, 3, 3)), "w_plus_0"),
    ({"clip_views": 0}, "clip_views"),
])
def test_bad_arguments_are_named(generator, clip_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimize(generator, clip_model, TEXT, **kwargs)


def test_empty_text_is_refused(generator, clip_model):
    with pytest.raises(ValueError, match="empty"):
        optimize(generator, clip_model, "  ", seed=0, steps=2)


def test_cli_optimize_on_the_embedded_model(tmp_path, capsys):
    from styleclip.cli import main

    bundle = model_zoo.get_bundle("toyfaces")
    try:
        registry.resolve(bundle.generator, allow_download=False, verify=False)
        registry.resolve(bundle.clip, allow_download=False, verify=False)
    except FileNotFoundError:
        pytest.skip("embedded toyfaces weights not present")
    out = tmp_path / "o.png"
    assert main(["optimize", "--model", "toyfaces", "--seed", "1", "--text", "a face with a big smile",
                 "--steps", "3", "--id-lambda", "0", "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.is_file() and line["steps"] == 3 and line["out"] == str(out)
    assert set(line) >= {"clip_loss_start", "clip_loss_end", "seconds", "identity"}
    assert line["id_lambda"] == 0.0 and line["identity"] is None and line["l2_lambda"] == bundle.opt_l2_lambda
    # without --id-lambda: the model's default weight with its identity network
    assert main(["optimize", "--model", "toyfaces", "--seed", "1", "--text", "a face with a big smile",
                 "--steps", "2", "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["id_lambda"] == bundle.opt_id_lambda and line["identity"] == "toyfaces-identity"
    assert main(["optimize", "--model", "toyfaces", "--text", "", "--steps", "3", "--out", str(out)]) == 2
    assert "empty" in capsys.readouterr().err
