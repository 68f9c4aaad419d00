"""Device choice (`models.device`), and every engine through the Studio on a CUDA GPU against the CPU.

The GPU tests are marked `gpu` (skipped by default and in CI): run them on a machine with a GPU with
`python -m pytest tests/test_device.py -m gpu -q`. They use the shipped embedded model.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from styleclip import cli
from styleclip.models.device import DEVICE_ENV, DeviceError, module_device, resolve_device


def test_names_env_and_auto(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert resolve_device(None) == resolve_device("auto") == torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device(None) == resolve_device("") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "auto")
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit name beats the environment


@pytest.mark.parametrize("name, message", [("gpu", "Unknown device 'gpu'"), ("meta", "not supported"),
                                           ("mps", "not supported")])
def test_unknown_devices_are_refused_plainly(name, message):
    with pytest.raises(DeviceError, match=message) as info:
        resolve_device(name)
    assert "use auto, cpu" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_plainly():
    with pytest.raises(DeviceError, match="sees no CUDA GPU here.*use cpu or auto"):
        resolve_device("cuda")


def test_cli_refuses_a_bad_device_without_a_traceback(tmp_path, capsys):
    assert cli.main(["render", "--generator", "toyfaces", "--out", str(tmp_path / "x.png"),
                     "--device", "tpu"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown device 'tpu'") and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_module_device():
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")


# ----------------------------------------------------------------------------------------------- on a GPU
def on_gpu(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


@pytest.fixture(scope="module")
def studios():
    from styleclip.studio import Studio

    return Studio("cpu"), Studio("cuda")


def _close(a: np.ndarray, b: np.ndarray, mean_tol: float = 1.0, max_tol: int = 40) -> None:
    """uint8 images from the two devices: float rounding moves a few pixels by a few levels, not the picture."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert a.shape == b.shape and diff.mean() < mean_tol and diff.max() <= max_tol, (diff.mean(), diff.max())


@on_gpu
def test_global_directions_on_cuda_match_the_cpu(studios):
    cpu, cuda = studios
    args = ("toyfaces", 7, "face", "smiling face", 4.1, 0.2)
    image_cpu, info_cpu = cpu.global_edit(*args)
    image_gpu, info_gpu = cuda.global_edit(*args)
    assert info_gpu["device"].startswith("cuda") and info_cpu["device"] == "cpu"
    assert info_gpu["channels"] == info_cpu["channels"]
    _close(image_cpu, image_gpu)
    loaded = cuda.model("toyfaces")
    s = loaded.s_of_seed(7)
    assert s.device.type == "cpu"  # what the app's state holds
    s_new = cuda.apply_edit("toyfaces", s, "face", "smiling face", 4.1, 0.2)
    assert s_new.device.type == "cpu"
    _close(loaded.render_s(s_new), image_gpu)
    gif = cuda.alpha_sweep_gif("toyfaces", s, "face", "smiling face", 4.1, 0.2, frames=3, size=64)
    assert Image.open(io.BytesIO(gif)).n_frames == 4
    npz = np.load(io.BytesIO(cuda.export_npz("toyfaces", s, s_new, "face", "smiling face", 4.1, 0.2)))
    assert np.allclose(npz["s_edited"], s_new.numpy())


@on_gpu
def test_mapper_apply_and_train_on_cuda(studios, tmp_path):
    cpu, cuda = studios
    path = cuda.shipped_mappers("toyfaces")["smiling"]
    [(_, src_gpu, edit_gpu)] = cuda.apply_mapper("toyfaces", path, [3])
    [(_, src_cpu, edit_cpu)] = cpu.apply_mapper("toyfaces", path, [3])
    _close(src_cpu, src_gpu)
    _close(edit_cpu, edit_gpu)
    info = cuda.train_mapper("toyfaces", "face with a knit hat", tmp_path / "hat.pt", steps=3)
    assert (tmp_path / "hat.pt").is_file() and np.isfinite(info["clip_loss_end"])
    [(_, _, edited)] = cpu.apply_mapper("toyfaces", tmp_path / "hat.pt", [3])  # a GPU-trained file loads on CPU
    assert edited.shape == src_cpu.shape


@on_gpu
def test_optimization_and_inversion_on_cuda(studios):
    _, cuda = studios
    image, info = cuda.optimize("toyfaces", 5, "face with a knit hat", steps=3)
    assert image.dtype == np.uint8 and info["device"].startswith("cuda")
    assert isinstance(info["latent"], np.ndarray) and np.isfinite(info["clip_loss_end"])
    image, info = cuda.optimize("toyfaces", 5, "face with a knit hat", steps=2, space="s",
                                s_source=cuda.model("toyfaces").s_of_seed(5))
    assert info["latent"].shape == (1, cuda.model("toyfaces").generator.s_dim)
    photo = cuda.fresh_render("toyfaces", 1)
    w_plus, s_flat, recon, info = cuda.invert_photo("toyfaces", photo, steps=2, s_steps=1)
    assert w_plus.device.type == s_flat.device.type == "cpu" and recon.shape == photo.shape
    [(_, _, edited)] = cuda.apply_mapper("toyfaces", cuda.shipped_mappers("toyfaces")["smiling"], [],
                                         w_plus_source=w_plus, s_source=s_flat)
    assert edited.shape == photo.shape


@on_gpu
def test_precompute_on_cuda_matches_the_cpu(studios, tmp_path):
    from styleclip.engines.precompute import precompute

    settings = {"n_stats": 200, "n_images": 3, "basis_energy": 0.995, "basis_images": 2, "refine_channels": 8,
                "probe_images": 1}
    results = []
    for studio, name in zip(studios, ("cpu", "cuda")):
        loaded = studio.model("toyfaces")
        results.append(precompute(loaded.generator, loaded.clip, tmp_path / name, **settings))
    a, b = results
    assert torch.allclose(a.mean, b.mean, atol=1e-4) and torch.allclose(a.std, b.std, atol=1e-4)
    assert (a.fs3 * b.fs3).sum(1).min() > 0.98  # the same unit rows up to float rounding
    assert a.manifest["refined_rows"] == b.manifest["refined_rows"]


@on_gpu
def test_cli_runs_on_cuda(tmp_path, capsys):
    import json

    assert cli.main(["edit", "--seed", "2", "--neutral", "face", "--target", "old face",
                     "--out", str(tmp_path / "e.png"), "--device", "cuda"]) == 0
    assert json.loads(capsys.readouterr().out)["device"].startswith("cuda")
    assert cli.main(["render", "--generator", "toyfaces", "--out", str(tmp_path / "r.png"),
                     "--device", "cuda", "--repeat", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["device"].startswith("cuda")
