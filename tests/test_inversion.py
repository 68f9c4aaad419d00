"""Tests for styleclip/engines/inversion.py: W+ projection on a tiny generator, S refinement, cancel, CLI."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from styleclip.engines.inversion import (E4EEncoder, InversionCancelled, invert, lap1_loss, laplacian_pyramid,
                                         load_e4e, psnr)
from styleclip.engines.precompute import Cancelled
from styleclip.imaging import img_to_image
from styleclip.models.checkpoints import CheckpointError
from styleclip.models.clip_model import ClipModel, build_small_clip
from tests.conftest import TINY_CLIP, make_tiny_generator


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generator():
    return make_tiny_generator()


@pytest.fixture(scope="module")
def clip_model():
    return ClipModel.from_model(build_small_clip(**TINY_CLIP, seed=0))


@pytest.fixture(scope="module")
def target(generator):
    """An image the generator makes from a known (truncated) latent, [1, 3, 32, 32], clamped to [-1, 1] like a
    photo (the random tiny generator overshoots the range)."""
    torch.manual_seed(1)
    with torch.no_grad():
        w_plus = generator.z_to_w_plus(torch.randn(1, generator.style_dim), truncation=0.7)
        return generator.synthesis_w_plus(w_plus).clamp(-1, 1)


def test_psnr_values():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a) == math.inf
    # MSE 0.04 on a peak-to-peak range of 2 → 10·log10(4 / 0.04) = 20 dB.
    assert psnr(a + 0.2, a) == pytest.approx(20.0, abs=1e-4)
    assert psnr(a + 5.0, a) == pytest.approx(psnr(a + 1.0, a))  # clamped like a saved image


def test_inversion_raises_psnr_clearly(generator, clip_model, target):
    steps = []
    result = invert(generator, clip_model, target, steps=30, lr=0.1,
                    progress=lambda done, total, stage: steps.append((done, total, stage)))
    assert result.w_plus.shape == (1, generator.n_latent, generator.style_dim)
    assert result.img.shape == target.shape
    assert len(result.history) == 30 and result.s is None
    assert steps[-1][:2] == (30, 30) and "PSNR" in steps[-1][2]
    # Measured: 9.5 dB at latent_avg → 17.8 dB after 30 steps (19.1 dB after 50).
    assert result.psnr > result.psnr_start + 5, (result.psnr_start, result.psnr)
    assert result.psnr == pytest.approx(psnr(generator.synthesis_w_plus(result.w_plus), target), abs=1e-3)
    assert result.history[-1].pixel < 0.5 * result.history[0].pixel
    assert not any(p.grad is not None for p in generator.parameters())  # the shared generator is untouched


def test_laplacian_pyramid_bands_rebuild_the_image_and_lap1_sums_band_l1():
    img = torch.rand(2, 3, 32, 32)
    bands = laplacian_pyramid(img, 4)
    assert [tuple(b.shape[-2:]) for b in bands] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    rebuilt = bands[-1]
    for band in reversed(bands[:-1]):  # each band is the image minus its upsampled low-pass
        rebuilt = band + torch.nn.functional.interpolate(rebuilt, size=band.shape[-2:], mode="bilinear",
                                                         align_corners=False)
    assert torch.allclose(rebuilt, img, atol=1e-5)
    assert lap1_loss(img, img) == 0
    other = torch.rand(2, 3, 32, 32)
    per_band = [(a - b).abs().mean() for a, b in zip(bands, laplacian_pyramid(other, 4), strict=True)]
    assert lap1_loss(other, img, levels=4) == pytest.approx(float(sum(per_band)), rel=1e-5)


def test_lap1_inversion_raises_psnr(generator, target):
    result = invert(generator, None, target, steps=30, lr=0.1, pixel_loss="lap1")
    assert result.psnr > result.psnr_start + 5, (result.psnr_start, result.psnr)


def test_s_refinement_and_no_clip(generator, target):
    previews = []
    result = invert(generator, None, target, steps=10, lr=0.1, s_steps=6, s_lr=0.02, preview_every=4,
                    on_preview=lambda step, img: previews.append((step, tuple(img.shape))))
    assert [h.stage for h in result.history] == ["w_plus"] * 10 + ["s"] * 6
    assert all(h.clip == 0.0 for h in result.history)
    assert result.s is not None and len(result.s) == generator.num_styles
    # img comes from the refined S code; w_plus stays the W+ stage's result.
    assert torch.allclose(result.img, generator.synthesis(result.s), atol=1e-5)
    assert [p[0] for p in previews] == [4, 8, 12, 16]
    assert result.psnr > result.psnr_start + 3


def test_cancel_returns_the_latest_result(generator, clip_model, target):
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 3  # polled before each step: 3 steps complete

    with pytest.raises(InversionCancelled) as info:
        invert(generator, clip_model, target, steps=20, lr=0.1, should_stop=should_stop)
    assert isinstance(info.value, Cancelled)
    partial = info.value.result
    assert len(partial.history) == 3
    assert partial.w_plus.shape == (1, generator.n_latent, generator.style_dim)
    assert partial.img.shape == target.shape and math.isfinite(partial.psnr)


def test_target_resized_and_bad_arguments(generator, target):
    big = torch.nn.functional.interpolate(target, scale_factor=2, mode="nearest")  # [1, 3, 64, 64]
    result = invert(generator, None, big, steps=2, lr=0.05)
    assert result.img.shape[-1] == generator.size
    with pytest.raises(ValueError, match="img_target"):
        invert(generator, None, target[0], steps=2)
    with pytest.raises(ValueError, match="steps"):
        invert(generator, None, target, steps=0)
    with pytest.raises(ValueError, match="pixel_loss"):
        invert(generator, None, target, steps=1, pixel_loss="l3")
    with pytest.raises(ValueError, match="w_plus_0"):
        invert(generator, None, target, steps=1, w_plus_0=torch.zeros(1, 2, 3))


def test_cli_invert_writes_npz(tmp_path, capsys, monkeypatch, generator, clip_model, target):
    from styleclip import studio
    from styleclip.cli import main

    loaded = SimpleNamespace(name="tiny", generator=generator, clip=clip_model)
    monkeypatch.setattr(studio, "Studio", lambda device=None: SimpleNamespace(model=lambda name: loaded))
    src = tmp_path / "face.png"
    Image.fromarray(img_to_image(target)).save(src)
    out = tmp_path / "latent.npz"
    assert main(["invert", "--image", str(src), "--out", str(out), "--steps", "3", "--s-steps", "2"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["model"] == "tiny" and info["steps"] == 3 and info["s_steps"] == 2
    data = np.load(out)
    assert data["w_plus"].shape == (1, generator.n_latent, generator.style_dim)
    assert data["s"].shape == (1, generator.s_dim)
    with torch.no_grad():  # the s written is the reconstruction's: rendering it gives the reported PSNR
        recon = generator.synthesis(generator.flat_to_s(torch.from_numpy(data["s"])))
    assert psnr(recon, target) == pytest.approx(info["psnr"], abs=1e-2)

    (tmp_path / "junk.png").write_bytes(b"nope")
    assert main(["invert", "--image", str(tmp_path / "junk.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not an image" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------- e4e


def test_e4e_full_size_layout_uses_the_official_names():
    with torch.device("meta"):  # shapes only: the real encoder has ~267 M parameters
        encoder = E4EEncoder()
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert shapes["input_layer.0.weight"] == (64, 3, 3, 3)
    assert shapes["input_layer.2.weight"] == (64,)  # PReLU
    assert shapes["body.0.res_layer.5.fc1.weight"] == (4, 64, 1, 1)
    assert shapes["body.3.shortcut_layer.0.weight"] == (128, 64, 1, 1)
    assert shapes["body.23.res_layer.5.fc2.weight"] == (512, 32, 1, 1)
    assert shapes["latlayer1.weight"] == (512, 256, 1, 1) and shapes["latlayer2.weight"] == (512, 128, 1, 1)
    assert shapes["styles.17.linear.weight"] == (512, 512)
    # 16, 32 and 64 px inputs need 4, 5 and 6 stride-2 convs (LeakyReLUs at the odd indices).
    for row, n_convs in ((0, 4), (3, 5), (7, 6), (17, 6)):
        convs = sorted({int(k.split(".")[3]) for k in shapes if k.startswith(f"styles.{row}.convs.")})
        assert convs == list(range(0, 2 * n_convs, 2))
    assert not any(k.startswith("styles.18.") for k in shapes)


def test_load_e4e_official_format_round_trip(tmp_path):
    torch.manual_seed(0)
    encoder = E4EEncoder(n_styles=8, base=16, style_dim=128).eval()  # official key names, small widths; 8 rows reach the 64 px level
    latent_avg = torch.randn(8, 128)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["decoder.style.1.weight"] = torch.randn(4, 4)  # the decoder part is ignored (ours decodes)
    path = tmp_path / "e4e_tiny.pt"
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": {"encoder_type": "Encoder4Editing"}}, path)

    inverter = load_e4e(path)
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    w_plus = inverter.encode(img)
    assert w_plus.shape == (1, 8, 128)
    x = torch.nn.functional.interpolate(img, size=(256, 256), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = encoder(x) + latent_avg
    torch.testing.assert_close(w_plus, expected, atol=1e-4, rtol=1e-4)
    # Row 0 is the base code; rows 1.. add deltas to it.
    assert not torch.allclose(w_plus[:, 0], w_plus[:, 5])


def test_load_e4e_rejects_other_files(tmp_path, generator):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"decoder.x": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="e4e"):
        load_e4e(path)
    encoder = E4EEncoder(n_styles=4, base=16, style_dim=128)
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                "latent_avg": torch.zeros(128)}, path)
    with pytest.raises(CheckpointError, match="generator takes"):
        load_e4e(path, generator=generator)  # 4 × 128 codes vs the tiny generator's latents
    assert load_e4e(path).encode(torch.zeros(1, 3, 256, 256)).shape == (1, 4, 128)
