"""Tests for styleclip.models.registry (search order, hub fallback, checksums) and safe checkpoint loading."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import warnings
from pathlib import Path

import clip
import huggingface_hub
import pytest
import torch

from styleclip.models import registry
from styleclip.models.checkpoints import describe_file, is_torchscript_archive
from styleclip.models.registry import (
    CheckpointError,
    ChecksumError,
    ModelFile,
    ModelNotFoundError,
    load_checkpoint,
    resolve,
    verify_sha256,
)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private registry, repo root and models folder; the hub is offline unless a test says otherwise."""
    monkeypatch.setattr(registry, "_KNOWN", dict(registry._KNOWN))
    monkeypatch.setattr(registry, "_REACHABLE", {})
    root = tmp_path / "repo"
    (root / "models").mkdir(parents=True)
    (root / "assets").mkdir()
    monkeypatch.setattr(registry, "REPO_ROOT", root)
    monkeypatch.delenv(registry.MODELS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


@pytest.fixture()
def no_hub(monkeypatch):
    """Any hub access fails the test."""

    def fail(*args, **kwargs):
        pytest.fail("the Hugging Face hub was contacted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    monkeypatch.setattr(registry, "_hub_reachable", fail)


def write(path: Path, content: bytes = b"weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------------------- known files


def test_default_registry_lists_the_four_upstream_files():
    names = {spec.name: spec for spec in registry.list_known()}
    assert {"stylegan2-ffhq-1024", "ViT-B/32", "arcface-ir-se50", "e4e-ffhq"} <= set(names)
    assert names["stylegan2-ffhq-1024"].filename == "stylegan2-ffhq-config-f.pt"
    assert names["arcface-ir-se50"].filename == "model_ir_se50.pth"
    assert names["e4e-ffhq"].filename == "e4e_ffhq_encode.pt"
    vit = names["ViT-B/32"]
    assert vit.filename == "ViT-B-32.pt" and vit.kind == "clip"
    # The sha256 is the one in OpenAI's download URL (clip/clip.py _MODELS).
    assert vit.sha256 == clip.clip._MODELS["ViT-B/32"].split("/")[-2]


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as info:
        resolve("stylegan3-ffhq")
    assert "stylegan3-ffhq" in str(info.value) and "'ViT-B/32'" in str(info.value)
    assert not registry.is_known("stylegan3-ffhq")


def test_filename_is_an_alias(isolated, no_hub):
    path = write(isolated / "models" / "stylegan2-ffhq-config-f.pt")
    assert resolve("stylegan2-ffhq-config-f.pt") == path
    assert registry.get("ViT-B-32.pt").name == "ViT-B/32"


def test_register_rules():
    spec = ModelFile(
        name="toyfaces", filename="generator.pt", kind="generator", asset_path="toyfaces/generator.pt"
    )
    registry.register(spec)
    registry.register(spec)  # the same spec again is fine
    assert registry.get("toyfaces") == spec
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ModelFile(name="toyfaces", filename="other.pt", kind="generator"))
    registry.register(ModelFile(name="toyfaces", filename="other.pt", kind="generator"), replace=True)
    assert registry.get("toyfaces").filename == "other.pt"
    with pytest.raises(ValueError, match="64 lowercase hex"):
        registry.register(ModelFile(name="bad", filename="bad.pt", kind="x", sha256="ABC"))
    with pytest.raises(ValueError, match="name and a filename"):
        registry.register(ModelFile(name="", filename="x.pt", kind="x"))
    with pytest.raises(AttributeError):  # frozen dataclass (FrozenInstanceError)
        spec.filename = "changed.pt"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------- search order


def test_repo_models_folder(isolated, no_hub):
    path = write(isolated / "models" / "e4e_ffhq_encode.pt")
    assert resolve("e4e-ffhq") == path
    assert registry.models_dir() == isolated / "models"


def test_env_var_folder_wins(isolated, tmp_path, monkeypatch, no_hub):
    write(isolated / "models" / "e4e_ffhq_encode.pt", b"repo copy")
    elsewhere = write(tmp_path / "elsewhere" / "e4e_ffhq_encode.pt", b"env copy")
    monkeypatch.setenv(registry.MODELS_ENV, str(tmp_path / "elsewhere"))
    assert resolve("e4e-ffhq") == elsewhere
    assert registry.models_dir() == tmp_path / "elsewhere"


def test_env_var_folder_replaces_repo_folder(isolated, tmp_path, monkeypatch, no_hub):
    # With the env var set, <repo>/models is not searched (one place to look, one place to put files).
    write(isolated / "models" / "e4e_ffhq_encode.pt")
    monkeypatch.setenv(registry.MODELS_ENV, str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError):
        resolve("e4e-ffhq")


def test_embedded_assets_come_after_the_models_folder(isolated, no_hub):
    registry.register(
        ModelFile(name="toyfaces", filename="toyfaces.pt", kind="generator", asset_path="toyfaces/g.pt")
    )
    asset = write(isolated / "assets" / "toyfaces" / "g.pt")
    assert resolve("toyfaces") == asset
    override = write(isolated / "models" / "toyfaces.pt")
    assert resolve("toyfaces") == override


def test_not_found_message_says_where_to_put_the_file(isolated, no_hub):
    with pytest.raises(ModelNotFoundError) as info:
        resolve("ViT-B/32")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "ViT-B-32.pt" in message
    assert str(isolated / "models" / "ViT-B-32.pt") in message
    assert registry.MODELS_ENV in message
    assert "353,976,522 bytes" in message


def test_not_found_message_for_unknown_size(isolated, no_hub):
    with pytest.raises(ModelNotFoundError) as info:
        resolve("stylegan2-ffhq-1024")
    message = str(info.value)
    assert "stylegan2-ffhq-config-f.pt" in message and "size not published" in message
    assert "akhaliq/jojogan-stylegan2-ffhq-config-f" in message and "HF_HUB_OFFLINE" in message


def test_offline_mode_uses_only_the_local_hf_cache(isolated, tmp_path, monkeypatch, no_hub):
    cached = write(tmp_path / "hf-cache" / "e4e_ffhq_encode.pt")
    seen = []

    def fake_cache_lookup(repo_id, filename, **kwargs):
        seen.append((repo_id, filename))
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", fake_cache_lookup)
    assert resolve("e4e-ffhq") == cached
    assert seen == [("AIRI-Institute/HairFastGAN", "pretrained_models/encoder4editing/e4e_ffhq_encode.pt")]


def test_online_download_when_the_file_is_missing(isolated, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    downloaded = write(tmp_path / "hub" / "model_ir_se50.pth")
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(downloaded)

    monkeypatch.setattr(registry, "_hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert resolve("arcface-ir-se50") == downloaded
    assert calls == [("Fubei/splatviz_inversion_checkpoints", "model_ir_se50.pth")]


def test_network_failure_falls_through_to_the_clear_error(isolated, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def broken(repo_id, filename, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("connection refused")

    monkeypatch.setattr(registry, "_hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", broken)
    with pytest.raises(ModelNotFoundError, match="download from Fubei/splatviz_inversion_checkpoints failed"):
        resolve("arcface-ir-se50")


def test_unreachable_hub_is_not_called(isolated, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(registry, "_hub_reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("hub called"))
    with pytest.raises(ModelNotFoundError, match="not reachable"):
        resolve("e4e-ffhq")


def test_allow_download_false_never_touches_the_hub(isolated, monkeypatch, no_hub):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelNotFoundError, match="downloads disabled"):
        resolve("e4e-ffhq", allow_download=False)


def test_hub_reachability_probe_fails_fast_without_network(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    assert registry._hub_reachable(timeout=1.0) is False


# ------------------------------------------------------------------------------------------------ checksums


def test_verify_sha256_good_and_bad(tmp_path):
    path = write(tmp_path / "f.bin", b"hello weights")
    good = hashlib.sha256(b"hello weights").hexdigest()
    assert verify_sha256(path, good) == good
    assert verify_sha256(path, good.upper()) == good
    with pytest.raises(ChecksumError) as info:
        verify_sha256(path, "0" * 64)
    assert good in str(info.value) and "0" * 64 in str(info.value) and str(path) in str(info.value)


def test_sha256_is_cached_by_path_mtime_and_size(tmp_path, monkeypatch):
    path = write(tmp_path / "f.bin", b"one")
    first = registry.sha256_file(path)
    opened = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    assert registry.sha256_file(path) == first
    assert opened == []  # served from the cache
    write(path, b"two!")  # new size and mtime → recomputed
    os.utime(path, ns=(1, 1))
    assert registry.sha256_file(path) == hashlib.sha256(b"two!").hexdigest()
    assert opened


def test_resolve_checks_registered_size_and_sha(isolated, no_hub):
    content = b"tiny model"
    digest = hashlib.sha256(content).hexdigest()
    registry.register(
        ModelFile(name="tiny", filename="tiny.pt", kind="x", size_bytes=len(content), sha256=digest)
    )
    path = write(isolated / "models" / "tiny.pt", content)
    assert resolve("tiny") == path
    write(path, b"tiny modeL")  # same size, different bytes
    with pytest.raises(ChecksumError, match="checksum"):
        resolve("tiny")
    assert resolve("tiny", verify=False) == path
    write(path, b"truncated")
    with pytest.raises(ChecksumError, match="incomplete"):
        resolve("tiny")


# --------------------------------------------------------------------------------------------- safe loading


def test_load_checkpoint_plain_dict_and_required_keys(tmp_path):
    path = tmp_path / "g.pt"
    torch.save({"g_ema": {"w": torch.ones(2)}, "latent_avg": torch.zeros(512)}, path)
    ckpt = load_checkpoint(path, required_keys=["g_ema"])
    assert torch.equal(ckpt["g_ema"]["w"], torch.ones(2))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, required_keys=["g_ema", "state_dict", "opts"])
    message = str(info.value)
    assert (
        "'state_dict'" in message and "'opts'" in message and "latent_avg" in message and str(path) in message
    )


@pytest.mark.parametrize(
    "name, content, found",
    [
        ("text.pt", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "text file"),
        ("page.pt", b"<!DOCTYPE html><html>Google Drive quota exceeded</html>", "HTML page"),
        ("random.pt", bytes(range(256)) * 16, "binary"),
        ("empty.pt", b"", "empty file"),
    ],
    ids=["git-lfs-pointer", "html", "binary", "empty"],
)
def test_non_checkpoints_are_checkpoint_errors(tmp_path, name, content, found):
    path = write(tmp_path / name, content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expected="a StyleGAN2 checkpoint")
    message = str(info.value)
    assert str(path) in message and "a StyleGAN2 checkpoint" in message and found in message
    assert isinstance(info.value, ValueError)


def test_truncated_zip_is_a_checkpoint_error(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(1000)}, good)
    bad = write(tmp_path / "bad.pt", good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated or corrupt zip"):
        load_checkpoint(bad)


def test_disallowed_globals_are_named_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, evil)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(evil)
    assert re.search(r"'(posix|nt|os)\.system'", str(info.value))
    assert not marker.exists()

    namespace = tmp_path / "train_ckpt.pt"
    torch.save({"g_ema": {}, "args": argparse.Namespace(size=1024)}, namespace)
    with pytest.raises(CheckpointError, match=r"argparse\.Namespace"):
        load_checkpoint(namespace)


def test_non_dict_and_torchscript_and_missing(tmp_path):
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="Tensor"):
        load_checkpoint(tensor)

    scripted = tmp_path / "ts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # torch.jit.script is deprecated; OpenAI's files are TorchScript
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))
    assert is_torchscript_archive(scripted) and not is_torchscript_archive(tensor)
    assert "TorchScript" in describe_file(scripted)
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_checkpoint(scripted)

    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
