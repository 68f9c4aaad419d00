"""Generator: official key layout, S layout, equivalence with the upstream design, early exit, loading errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.plain_stylegan2 import plain_synthesis
from styleclip.imaging import img_to_images
from styleclip.models.generator import Generator
from styleclip.models.generator_io import GeneratorCheckpointError, infer_config, load_generator, save_generator
from styleclip.models.registry import CheckpointError
from tests.conftest import make_tiny_generator

KEYS_FILE = Path(__file__).parent / "data" / "stylegan2_ffhq1024_g_ema_keys.txt"


def official_key_shapes() -> dict[str, tuple[int, ...]]:
    """The 171 names and shapes of the official FFHQ-1024 g_ema, read from the reference list."""
    shapes = {}
    for line in KEYS_FILE.read_text().splitlines():
        m = re.fullmatch(r"(\S+) \(([\d, ]*)\)", line.strip())
        if m:
            shapes[m.group(1)] = tuple(int(v) for v in m.group(2).replace(",", " ").split())
    return shapes


@pytest.fixture(scope="module")
def official_random_file(tmp_path_factory) -> Path:
    """A file in the exact official format ({"g_ema", "latent_avg"}), filled with random weights."""
    torch.manual_seed(1)
    shapes = official_key_shapes()
    assert len(shapes) == 171
    state = {k: torch.randn(shape) for k, shape in shapes.items()}
    for k in state:  # realistic scales: styles near 1 (their init), small noise strengths and biases
        if k.endswith("modulation.bias"):
            state[k] = 1 + 0.1 * state[k]
        elif k.endswith(("noise.weight", "activate.bias")) or k.startswith("to_rgb") and k.endswith(".bias"):
            state[k] = 0.05 * state[k]
        elif k.startswith("to_rgb") and k.endswith("conv.weight"):
            state[k] = 0.002 * state[k]  # keeps the image near [-1, 1], as a trained generator's
    path = tmp_path_factory.mktemp("official") / "stylegan2-ffhq-config-f.pt"
    torch.save({"g_ema": state, "latent_avg": torch.randn(512)}, path)
    return path


def test_official_format_loads_strictly_and_has_the_ffhq_s_layout(official_random_file):
    g = load_generator(official_random_file)
    assert (g.size, g.style_dim, g.n_latent, g.config.n_mlp) == (1024, 512, 18, 8)
    assert g.num_styles == 26 and g.s_dim == 9088
    assert sum(layer.dim for layer in g.conv_layers) == 6048
    assert [layer.w_index for layer in g.style_layers] == [
        0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 7, 7, 8, 9, 9, 10, 11, 11, 12, 13, 13, 14, 15, 15, 16, 17]
    assert [layer.index for layer in g.style_layers if layer.is_torgb] == list(range(1, 26, 3))
    dims = [layer.dim for layer in g.style_layers]
    assert dims[:15] == [512] * 15 and dims[15:] == [256, 256, 256, 128, 128, 128, 64, 64, 64, 32, 32]
    by_name = {layer.name: layer for layer in g.style_layers}
    assert by_name["conv1_resolution_128"].dim == 256 and by_name["conv1_resolution_128"].offset == 7680
    assert by_name["toRGB_resolution_1024"].offset == 9056 and by_name["conv0_resolution_8"].module == "convs.0"


def test_official_format_renders_1024_equal_to_upstream_design(official_random_file):
    g = load_generator(official_random_file)
    z = torch.from_numpy(np.random.RandomState(0).randn(1, 512).astype(np.float32))
    with torch.inference_mode():
        w_plus = g.z_to_w_plus(z, truncation=0.7)
        img = g.synthesis(g.w_plus_to_s(w_plus))
        ref = plain_synthesis(g, w_plus)
    assert img.shape == (1, 3, 1024, 1024)
    assert 0.02 < float(ref.abs().median()) < 2
    torch.testing.assert_close(img, ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
    ours, theirs = img_to_images(img)[0].astype(int), img_to_images(ref)[0].astype(int)
    assert np.abs(ours - theirs).max() <= 1
    assert (ours != theirs).mean() < 1e-3


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("grad", [False, True])
def test_synthesis_matches_upstream_design(batch, grad):
    g = make_tiny_generator(size=64)
    z = torch.randn(batch, g.style_dim)
    w_plus = g.z_to_w_plus(z).detach()
    with torch.set_grad_enabled(grad):
        w_in = w_plus.clone().requires_grad_(grad)
        img = g.synthesis_w_plus(w_in)
    with torch.no_grad():
        ref = plain_synthesis(g, w_plus)
    assert img.shape == (batch, 3, 64, 64)
    torch.testing.assert_close(img.detach(), ref, rtol=1e-4, atol=1e-4)
    if grad:
        # With a style that needs a gradient, a single image modulates its activations, not its weights (no
        # weight-gradient convolution); the gradient must still be the upstream design's.
        img.square().mean().backward()
        w_ref = w_plus.clone().requires_grad_(True)
        plain_synthesis(g, w_ref).square().mean().backward()
        assert w_in.grad is not None and w_in.grad.abs().sum() > 0
        torch.testing.assert_close(w_in.grad, w_ref.grad, rtol=1e-3, atol=1e-3 * float(w_ref.grad.abs().max()))


def test_s_edit_changes_only_through_that_channel():
    g = make_tiny_generator()
    w_plus = g.z_to_w_plus(torch.randn(1, g.style_dim))
    with torch.no_grad():
        s = g.w_plus_to_s(w_plus)
        base = g.synthesis(s)
        edited = [t.clone() for t in s]
        edited[3][0, 5] += 3.0
        moved = g.synthesis(edited)
        flat = g.s_to_flat(s)
        assert flat.shape == (1, g.s_dim)
        back = g.synthesis(g.flat_to_s(flat))
    assert torch.equal(back, base)
    assert (moved - base).abs().max() > 1e-3


def test_early_exit_returns_the_skip_image_at_that_resolution():
    g = make_tiny_generator(size=64)
    w_plus = g.z_to_w_plus(torch.randn(2, g.style_dim))
    captured = {}
    hook = g.to_rgbs[1].register_forward_hook(lambda m, i, o: captured.setdefault("img16", o.detach().clone()))
    with torch.no_grad():
        g.synthesis_w_plus(w_plus)
        hook.remove()
        early = g.synthesis_w_plus(w_plus, until_resolution=16)
        first = g.synthesis_w_plus(w_plus, until_resolution=4)
    assert early.shape == (2, 3, 16, 16) and first.shape == (2, 3, 4, 4)
    torch.testing.assert_close(early, captured["img16"])
    with pytest.raises(ValueError, match="until_resolution"):
        g.synthesis_w_plus(w_plus, until_resolution=12)


def test_truncation_and_latent_shapes(tiny_generator):
    g = tiny_generator
    z = torch.randn(4, g.style_dim)
    w = g.mapping(z)
    assert w.shape == (4, g.style_dim)
    torch.testing.assert_close(g.truncate(w, 0.0), g.latent_avg.expand(4, -1))
    w_plus = g.z_to_w_plus(z, truncation=0.5)
    assert w_plus.shape == (4, g.n_latent, g.style_dim)
    s = g.w_plus_to_s(w_plus)
    assert [t.shape[1] for t in s] == [layer.dim for layer in g.style_layers]


def test_save_load_round_trip_and_fp16(tmp_path, tiny_generator):
    g = tiny_generator
    z = torch.randn(1, g.style_dim)
    save_generator(g, tmp_path / "g.pt")
    save_generator(g, tmp_path / "g16.pt", half=True)
    g2, g16 = load_generator(tmp_path / "g.pt"), load_generator(tmp_path / "g16.pt")
    assert g2.config == g.config
    with torch.no_grad():
        torch.testing.assert_close(g2(z), g(z))
        torch.testing.assert_close(g16(z), g(z), atol=0.05, rtol=0.05)
    torch.testing.assert_close(g2.latent_avg, g.latent_avg)


def test_infer_config_from_weights_alone(tiny_generator):
    cfg = infer_config(tiny_generator.state_dict())
    assert (cfg.size, cfg.style_dim, cfg.n_mlp) == (32, 32, 2)
    assert cfg.channels() == tiny_generator.config.channels()


def _official_like(g: Generator) -> dict:
    return {"g_ema": {k: v.clone() for k, v in g.state_dict().items()}, "latent_avg": g.latent_avg.clone()}


def test_missing_extra_and_misshaped_keys_are_named(tmp_path, tiny_generator):
    ckpt = _official_like(tiny_generator)
    del ckpt["g_ema"]["convs.1.noise.weight"]
    ckpt["g_ema"]["extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(GeneratorCheckpointError, match=r"1 keys missing \(convs.1.noise.weight\).*extra.weight"):
        load_generator(tmp_path / "bad.pt")

    ckpt = _official_like(tiny_generator)
    ckpt["g_ema"]["convs.1.activate.bias"] = torch.zeros(7)
    torch.save(ckpt, tmp_path / "shape.pt")
    with pytest.raises(GeneratorCheckpointError, match=r"convs.1.activate.bias: expected \(16,\), found \(7,\)"):
        load_generator(tmp_path / "shape.pt")


def test_non_generator_files_are_refused_clearly(tmp_path):
    (tmp_path / "notes.pt").write_text("hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_generator(tmp_path / "notes.pt")
    torch.save({"state_dict": {"a": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="g_ema"):
        load_generator(tmp_path / "other.pt")
    torch.save({"g_ema": {"a": torch.zeros(1)}}, tmp_path / "foreign.pt")
    with pytest.raises(GeneratorCheckpointError, match="not a StyleGAN2 generator"):
        load_generator(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "missing.pt")


@pytest.mark.parametrize("batch", [1, 3])
def test_polyphase_upsampling_equals_padded_transposed_conv(batch):
    from styleclip.models.generator import _PHASE_TAPS, _upsample_conv_polyphase
    torch.manual_seed(batch)
    x, weight = torch.randn(batch, 8, 5, 7), torch.randn(4, 8, 3, 3)
    expected = torch.nn.functional.pad(torch.nn.functional.conv_transpose2d(x, weight.transpose(0, 1), stride=2),
                                       (1, 1, 1, 1))
    phases = [weight[:, :, rows][:, :, :, cols] for rows in _PHASE_TAPS for cols in _PHASE_TAPS]
    torch.testing.assert_close(_upsample_conv_polyphase(x, phases), expected, atol=1e-5, rtol=1e-5)


def test_inference_and_autograd_paths_render_the_same(tiny_generator):
    """No-grad synthesis takes the in-place and polyphase paths; with grad it takes the plain ones."""
    w_plus = tiny_generator.z_to_w_plus(torch.randn(2, 32, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        fast = tiny_generator.synthesis_w_plus(w_plus)
        fast_single = tiny_generator.synthesis_w_plus(w_plus[:1])
    w_leaf = w_plus.clone().requires_grad_(True)
    slow = tiny_generator.synthesis_w_plus(w_leaf)
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast_single, slow.detach()[:1], atol=1e-5, rtol=1e-4)


def test_weight_cache_from_inference_mode_serves_autograd_later(tiny_generator):
    """The app renders under inference_mode, then an optimisation differentiates through the same frozen weights."""
    tiny_generator.requires_grad_(False)
    w_plus = tiny_generator.z_to_w_plus(torch.randn(1, 32, generator=torch.Generator().manual_seed(0)))
    with torch.inference_mode():
        expected = tiny_generator.synthesis_w_plus(w_plus)
    leaf = w_plus.clone().requires_grad_(True)
    img = tiny_generator.synthesis_w_plus(leaf)
    img.square().mean().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    torch.testing.assert_close(img.detach(), expected, atol=1e-5, rtol=1e-4)
