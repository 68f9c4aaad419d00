"""Tests for styleclip.models.clip_model: fast text vs the clip package, caches, templates, images, IO."""

from __future__ import annotations

import os
import time
import warnings

import clip
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip.model import build_model
from PIL import Image

from styleclip.models import clip_model as cm_module
from styleclip.models import registry
from styleclip.models.checkpoints import CheckpointError
from styleclip.models.clip_model import (
    IMAGENET_TEMPLATES,
    ClipModel,
    build_small_clip,
    clip_config,
)

from tests.conftest import TINY_CLIP  # noqa: E402

TINY = TINY_CLIP

PROMPTS = [
    "a face",
    "smile",
    "a photo of a face with blue eyes",
    "a photo of the face",
    "a photo of a face",  # shares a long prefix with the two above
    "an extremely long description of a person with curly red hair, freckles and a green scarf in the rain",
    "a face",  # duplicate
    "Émile's café — naïve façade",  # non-ASCII goes through ftfy/BPE like in clip.tokenize
]


@pytest.fixture(scope="module")
def tiny_clip():
    return build_small_clip(**TINY, seed=0)


@pytest.fixture()
def wrapper(tiny_clip):
    return ClipModel.from_model(tiny_clip)


def reference_text(model, texts):
    """The clip package's own way: full 77-token context, then L2-normalise."""
    with torch.no_grad():
        return F.normalize(model.encode_text(clip.tokenize(texts)), dim=-1)


def reference_image(model, images):
    with torch.no_grad():
        return F.normalize(model.encode_image(images), dim=-1)


# ----------------------------------------------------------------------------------------------------- text


def test_encode_text_matches_full_context_clip(wrapper, tiny_clip):
    ours = wrapper.encode_text(PROMPTS)
    ref = reference_text(tiny_clip, PROMPTS)
    assert ours.shape == (len(PROMPTS), TINY["embed_dim"])
    assert ours.dtype == torch.float32
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(PROMPTS)), atol=1e-5)
    assert (ours * ref).sum(-1).min() >= 0.9999
    assert torch.allclose(ours, ref, atol=1e-5)
    # The comparison means something only if different prompts give different embeddings.
    sims = ref @ ref.T
    assert sims[0, 1] < 0.99 and sims[2, 3] < 0.999


def test_tree_chunking_does_not_change_results(tiny_clip):
    # Tiny chunks force prompts (and even single prompts larger than the limit) into separate trees.
    small = ClipModel.from_model(tiny_clip, max_tree_nodes=4)
    big = ClipModel.from_model(tiny_clip, max_tree_nodes=100_000)
    ref = reference_text(tiny_clip, PROMPTS)
    assert torch.allclose(small.encode_text(PROMPTS), ref, atol=1e-5)
    assert torch.allclose(big.encode_text(PROMPTS), ref, atol=1e-5)


def test_single_string_and_empty_list(wrapper):
    assert wrapper.encode_text("a face").shape == (1, TINY["embed_dim"])
    assert wrapper.encode_text([]).shape == (0, TINY["embed_dim"])


def test_cache_hit_runs_no_model(wrapper, monkeypatch):
    first = wrapper.encode_text(["a face", "smile"])
    calls = wrapper.text_forward_calls

    def fail(*args, **kwargs):
        raise AssertionError("the model ran for a cached text")

    monkeypatch.setattr(wrapper, "_encode_tree", fail)
    second = wrapper.encode_text(["smile", "a face", "a face"])
    assert wrapper.text_forward_calls == calls
    assert (
        torch.equal(second[0], first[1])
        and torch.equal(second[1], first[0])
        and torch.equal(second[2], first[0])
    )
    info = wrapper.cache_info()
    assert info["text_hits"] >= 2 and info["text_size"] == 2


def test_returned_tensors_do_not_alias_the_cache(wrapper):
    out = wrapper.encode_text(["a face"])
    expected = out.clone()
    out.zero_()
    assert torch.equal(wrapper.encode_text(["a face"]), expected)
    t = wrapper.encode_text_templates("a face", templates=("a {}.", "the {}."))
    t_expected = t.clone()
    t.zero_()
    assert torch.equal(wrapper.encode_text_templates("a face", templates=("a {}.", "the {}.")), t_expected)


def test_cache_is_lru_bounded(tiny_clip):
    w = ClipModel.from_model(tiny_clip, text_cache_size=2)
    w.encode_text(["one"])
    w.encode_text(["two"])
    w.encode_text(["one"])  # refresh "one"; "two" is now the oldest
    w.encode_text(["three"])  # evicts "two"
    calls = w.text_forward_calls
    w.encode_text(["one", "three"])
    assert w.text_forward_calls == calls
    w.encode_text(["two"])
    assert w.text_forward_calls == calls + 1
    assert w.cache_info()["text_size"] == 2
    w.clear_cache()
    assert w.cache_info()["text_size"] == 0


def test_text_embeddings_work_in_a_loss(wrapper):
    # Cached embeddings are computed under inference_mode; what callers get must still work in autograd.
    text = wrapper.encode_text(["a face"])
    img = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss = 1 - (wrapper.encode_image(img * 2 - 1) * text).sum()
    loss.backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_imagenet_templates_are_stylecliPs_79():
    assert len(IMAGENET_TEMPLATES) == 79
    assert len(set(IMAGENET_TEMPLATES)) == 79
    assert "a photo of many {}." not in IMAGENET_TEMPLATES
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}." and IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."


def test_template_average_matches_direct_computation(wrapper, tiny_clip):
    text = "face with blue eyes"
    filled = [t.format(text) for t in IMAGENET_TEMPLATES]
    direct = F.normalize(reference_text(tiny_clip, filled).mean(dim=0), dim=-1)
    ours = wrapper.encode_text_templates(text)
    assert ours.shape == (TINY["embed_dim"],)
    assert torch.allclose(ours, direct, atol=1e-5)
    assert abs(float(ours.norm()) - 1) < 1e-5

    # The batch form agrees and hits the template cache for texts already seen.
    calls = wrapper.text_forward_calls
    both = wrapper.encode_text_templates_batch([text, "face with eyes"])
    assert wrapper.text_forward_calls == calls + 1  # only "face with eyes" needed a forward
    assert torch.equal(both[0], ours)
    neutral = F.normalize(
        reference_text(tiny_clip, [t.format("face with eyes") for t in IMAGENET_TEMPLATES]).mean(0), dim=-1
    )
    assert torch.allclose(both[1], neutral, atol=1e-5)
    calls = wrapper.text_forward_calls
    wrapper.encode_text_templates("face with eyes")
    assert wrapper.text_forward_calls == calls


def test_custom_templates_are_cached_separately(wrapper, tiny_clip):
    a = wrapper.encode_text_templates("face", templates=("a {}.",))
    assert torch.allclose(a, reference_text(tiny_clip, ["a face."])[0], atol=1e-5)
    b = wrapper.encode_text_templates("face", templates=("the {}.",))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="placeholder"):
        wrapper.encode_text_templates("face", templates=("no placeholder",))
    with pytest.raises(ValueError, match="No templates"):
        wrapper.encode_text_templates("face", templates=())


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_text_is_a_clear_error(wrapper, bad):
    with pytest.raises(ValueError, match="empty"):
        wrapper.encode_text(["a face", bad])
    with pytest.raises(ValueError, match="empty"):
        wrapper.encode_text_templates(bad)


def test_overlong_text_is_a_clear_error(wrapper):
    long_text = "a very detailed " + "portrait " * 80
    with pytest.raises(ValueError) as info:
        wrapper.encode_text(["a face", long_text])
    message = str(info.value)
    assert "too long" in message and "77" in message and "a very detailed portrait" in message
    # The failure leaves the cache usable and does not cache anything for the failed batch.
    assert wrapper.encode_text(["a face"]).shape == (1, TINY["embed_dim"])


def test_non_string_prompt_is_a_type_error(wrapper):
    with pytest.raises(TypeError, match="str"):
        wrapper.encode_text(["a face", 3])


def test_properties(wrapper):
    assert wrapper.input_resolution == 32
    assert wrapper.embed_dim == 64
    assert wrapper.context_length == 77
    assert wrapper.device == torch.device("cpu")
    assert not any(p.requires_grad for p in wrapper.model.parameters())
    assert "ClipModel" in repr(wrapper)


# --------------------------------------------------------------------------------------------------- images


def random_image(size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def test_encode_image_is_differentiable_and_matches_eval(wrapper, tiny_clip):
    image = random_image()
    img = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1).requires_grad_(True)
    emb = wrapper.encode_image(img)
    assert emb.shape == (1, TINY["embed_dim"]) and emb.requires_grad
    emb.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0

    # 32x32 input needs no resizing: both paths see the same pixels.
    eval_emb = wrapper.encode_image_eval([image])
    assert torch.allclose(emb.detach(), eval_emb, atol=1e-5)
    # PIL input and a bare array give the same as the list form; results are ordinary tensors.
    assert torch.allclose(wrapper.encode_image_eval(Image.fromarray(image)), eval_emb, atol=1e-6)
    assert torch.allclose(wrapper.encode_image_eval(image), eval_emb, atol=1e-6)
    assert not eval_emb.is_inference()


def test_encode_image_eval_matches_official_preprocess(wrapper, tiny_clip):
    # A non-square image that needs resizing: compare with clip's own transform from clip.load.
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8))
    official = clip.clip._transform(wrapper.input_resolution)(image)[None]
    assert torch.allclose(wrapper.encode_image_eval([image]), reference_image(tiny_clip, official), atol=1e-5)


def test_encode_image_resizes_and_crops(wrapper):
    big = torch.rand(2, 3, 80, 64) * 2 - 1  # non-square, larger: crop then antialiased downsize
    small = torch.rand(1, 3, 16, 16) * 2 - 1  # smaller: upsized
    assert wrapper.encode_image(big).shape == (2, TINY["embed_dim"])
    assert wrapper.encode_image(small).shape == (1, TINY["embed_dim"])
    # Cropping keeps the center: padding a square image with junk rows does not change the result.
    square = torch.rand(1, 3, 32, 32) * 2 - 1
    padded = torch.cat([torch.ones(1, 3, 4, 32), square, -torch.ones(1, 3, 4, 32)], dim=2)
    assert torch.allclose(wrapper.encode_image(square), wrapper.encode_image(padded), atol=1e-6)


def test_image_input_errors(wrapper):
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        wrapper.encode_image(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        wrapper.encode_image_eval([np.zeros((32, 32, 3), dtype=np.float32)])
    with pytest.raises(TypeError):
        wrapper.encode_image_eval(["not an image"])


# ----------------------------------------------------------------------------------------------- build/load


def test_build_small_clip_defaults_rebuild_with_build_model():
    model = build_small_clip(seed=1)
    config = clip_config(model)
    assert config == {
        "embed_dim": 256,
        "image_resolution": 64,
        "vision_layers": 4,
        "vision_width": 256,
        "vision_patch_size": 8,
        "context_length": 77,
        "vocab_size": 49408,
        "transformer_width": 256,
        "transformer_heads": 4,
        "transformer_layers": 4,
    }
    rebuilt = build_model({k: v.clone() for k, v in model.state_dict().items()})
    assert clip_config(rebuilt) == config


def test_build_small_clip_resnet_tower_rebuilds_and_loads(tmp_path):
    model = build_small_clip(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
                             vision_patch_size=None, transformer_width=64, transformer_heads=1,
                             transformer_layers=1, seed=0)
    config = clip_config(model)
    assert config["vision_layers"] == (1, 1, 1, 1) and config["vision_patch_size"] is None
    assert clip_config(build_model({k: v.clone() for k, v in model.state_dict().items()})) == config
    path = tmp_path / "rn.pt"
    torch.save({"state_dict": model.state_dict(), "config": config}, path)
    wrapper = ClipModel.load(path)
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = F.normalize(model.encode_image(((img + 1) / 2 - mean) / std), dim=-1)
        assert torch.allclose(wrapper.encode_image(img), expected, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"vision_layers": (1, 1, 1)}, "4 stage depths"),
    ({"vision_layers": (1, 1, 1, 1), "vision_width": 15}, "even"),
    ({"vision_layers": (1, 1, 1, 1), "vision_width": 16, "image_resolution": 48}, "multiple of 32"),
])
def test_build_small_clip_rejects_bad_resnet_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_small_clip(**kwargs)


def test_build_small_clip_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_small_clip(**TINY, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_small_clip(**TINY, seed=3)
    assert torch.equal(a.token_embedding.weight, b.token_embedding.weight)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(transformer_heads=2), "transformer_heads"),
        (dict(vision_width=96), "vision_width"),
        (dict(transformer_width=100, transformer_heads=1), "transformer_width"),
        (dict(image_resolution=30), "multiple of the patch"),
        (dict(vocab_size=1000), "49408"),
    ],
)
def test_build_small_clip_rejects_unrebuildable_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_small_clip(**{**TINY, **kwargs})


def assert_same_model(loaded: ClipModel, model) -> None:
    texts = ["a face", "a photo of a smiling face"]
    assert torch.equal(loaded.encode_text(texts), ClipModel.from_model(model).encode_text(texts))
    img = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.allclose(
        loaded.encode_image(img),
        reference_image(model, ((img + 1) / 2 - loaded._mean) / loaded._std),
        atol=1e-6,
    )


def test_state_dict_round_trip(tmp_path, tiny_clip):
    plain = tmp_path / "plain.pt"
    torch.save(tiny_clip.state_dict(), plain)
    assert_same_model(ClipModel.load(plain), tiny_clip)

    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": tiny_clip.state_dict()}, wrapped)
    assert_same_model(ClipModel.load(str(wrapped)), tiny_clip)

    saved = tmp_path / "with_config.pt"
    ClipModel.from_model(tiny_clip).save(saved)
    loaded = ClipModel.load(saved)
    assert clip_config(loaded.model) == clip_config(tiny_clip)
    assert_same_model(loaded, tiny_clip)


def test_fp32_weights_are_not_rounded_through_fp16(tmp_path, tiny_clip):
    # clip.model.build_model loads into fp16 modules; the loader must restore the exact fp32 values.
    path = tmp_path / "plain.pt"
    torch.save(tiny_clip.state_dict(), path)
    loaded = ClipModel.load(path)
    for name, value in tiny_clip.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


def test_torchscript_archive_round_trip(tmp_path):
    # Like OpenAI's files: a traced CLIP whose state_dict also has input_resolution/context_length/vocab_size.
    model = build_small_clip(**TINY, seed=5)
    # Plain int attributes after construction (encode_text/encode_image do not read them): make them buffers.
    del model.context_length, model.vocab_size
    model.register_buffer("input_resolution", torch.tensor(32))
    model.register_buffer("context_length", torch.tensor(77))
    model.register_buffer("vocab_size", torch.tensor(49408))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(
            model, (torch.zeros(1, 3, 32, 32), clip.tokenize(["a face"])), check_trace=False
        )
    path = tmp_path / "jit.pt"
    traced.save(str(path))
    assert time.perf_counter() - start < 20
    loaded = ClipModel.load(path)
    assert {"input_resolution", "context_length", "vocab_size"} <= set(traced.state_dict())
    for name in ("input_resolution", "context_length", "vocab_size"):
        delattr(model, name)
    model.context_length, model.vocab_size = 77, 49408
    assert_same_model(loaded, model)


def test_load_by_registered_name(tmp_path, tiny_clip, monkeypatch):
    monkeypatch.setattr(registry, "_KNOWN", dict(registry._KNOWN))
    monkeypatch.setenv(registry.MODELS_ENV, str(tmp_path))
    torch.save(tiny_clip.state_dict(), tmp_path / "tiny-clip.pt")
    registry.register(registry.ModelFile(name="tiny-clip", filename="tiny-clip.pt", kind="clip"))
    assert_same_model(ClipModel.load("tiny-clip"), tiny_clip)
    with pytest.raises(ValueError, match="not CLIP"):
        ClipModel.load("e4e-ffhq")


def test_known_name_without_file_gives_the_registry_message(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.MODELS_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(registry.ModelNotFoundError) as info:
        ClipModel.load("ViT-B/32")
    assert "ViT-B-32.pt" in str(info.value) and str(tmp_path) in str(info.value)


def test_unknown_names_and_missing_paths(tmp_path):
    with pytest.raises(ValueError, match="ViT-B/32"):
        ClipModel.load("ViT-H/99")
    with pytest.raises(ValueError, match="not registered here"):
        ClipModel.load("ViT-L/14")  # an OpenAI name we do not register
    with pytest.raises(FileNotFoundError):
        ClipModel.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="folder"):
        ClipModel.load(tmp_path)


def test_corrupt_files_are_clear_errors(tmp_path, tiny_clip):
    good = tmp_path / "good.pt"
    torch.save(tiny_clip.state_dict(), good)
    data = good.read_bytes()
    cases = {
        "text.pt": b"this is not a checkpoint\n",
        "random.pt": os.urandom(4096),
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            ClipModel.load(path)
        message = str(info.value)
        assert str(path) in message and "CLIP checkpoint" in message, message
        assert "Traceback" not in message


def test_foreign_state_dict_is_rejected(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, path)
    with pytest.raises(CheckpointError) as info:
        ClipModel.load(path)
    message = str(info.value)
    assert "token_embedding.weight" in message and "conv1.weight" in message and str(path) in message


def test_inconsistent_clip_tensors_are_rejected(tmp_path, tiny_clip):
    sd = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    sd["ln_final.weight"] = torch.ones(32)  # width no longer matches the rest
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="consistent CLIP"):
        ClipModel.load(path)


def test_unsafe_pickle_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"token_embedding.weight": Evil()}, path)
    with pytest.raises(CheckpointError, match="refuses"):
        ClipModel.load(path)
    assert not marker.exists()


def test_module_exports():
    for name in cm_module.__all__:
        assert hasattr(cm_module, name)
