"""Latent mapper: architecture and level split, official checkpoint loading (against an independent oracle),
clear errors for bad files, training (loss goes down, deterministic, resume, cancel, previews) and the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_clip, make_tiny_generator
from PIL import Image

from styleclip.cli import main
from styleclip.engines.clip_losses import text_change_direction
from styleclip.engines.mapper import (
    GROUPS,
    Cancelled,
    LevelsMapper,
    MapperCheckpointError,
    MapperConfig,
    apply_mapper,
    level_splits,
    load_mapper,
    sample_w_plus,
    save_mapper,
    train_mapper,
    validation_objective,
)
from styleclip.models.checkpoints import CheckpointError
from styleclip.models.clip_model import ClipModel
from styleclip.models.generator import Generator
from styleclip.models.generator_io import save_generator
from styleclip.models.identity import IdentityModel
from styleclip.models.model_zoo import MAPPER_DIRECTION_WEIGHT_TOYFACES, MAPPER_ID_WEIGHT_TOYFACES

# The machine is shared with background jobs: one thread keeps timings sane (conftest asks for two).
torch.set_num_threads(1)

TEXT = "a smiling face with purple hair"
_OFFICIAL_NAMES = {"coarse": "course", "medium": "medium", "fine": "fine"}  # the upstream spelling


@pytest.fixture(scope="module")
def ffhq_like_generator() -> Generator:
    """FFHQ's latent layout (18 rows of 512) with thin convolutions, so it builds in a split second."""
    torch.manual_seed(1)
    return Generator(1024, 512, n_mlp=1, channel_max=16).eval()


@pytest.fixture(scope="module")
def gen64() -> Generator:
    """A 64 px generator: 10 W+ rows, so all three groups own rows (a 32 px one has no fine rows)."""
    torch.manual_seed(2)
    return Generator(64, style_dim=32, n_mlp=1, channel_max=16).eval()


@pytest.fixture(scope="module")
def tiny() -> Generator:
    return make_tiny_generator()


@pytest.fixture(scope="module")
def tiny_clip() -> ClipModel:
    return make_tiny_clip()


def _train(generator, clip_model, text=TEXT, **kwargs):
    settings = dict(steps=4, batch=2, lr=0.5, clip_weight=1.0, l2_weight=0.8, seed=3)
    settings.update(kwargs)
    return train_mapper(generator, clip_model, text, **settings)


# --------------------------------------------------------------------------------------------- architecture
def test_ffhq_sized_architecture_matches_the_official_layout():
    mapper = LevelsMapper(MapperConfig(512, 18))
    assert mapper.config.ranges() == {"coarse": (0, 4), "medium": (4, 8), "fine": (8, 18)}
    # 4 x (512 x 512 + 512) per group, 3 groups: the official 3.15 M parameters.
    assert sum(p.numel() for p in mapper.parameters()) == 3 * 1_050_624
    keys = set(mapper.state_dict())
    assert keys == {
        f"groups.{g}.layers.{i}.{p}" for g in GROUPS for i in range(4) for p in ("weight", "bias")
    }
    w_plus = torch.randn(2, 18, 512)
    with torch.no_grad():
        assert mapper(w_plus).shape == (2, 18, 512)
        assert apply_mapper(mapper, w_plus).shape == (2, 18, 512)


@pytest.mark.parametrize(
    "n_latent, splits", [(18, (4, 8)), (14, (4, 8)), (10, (4, 8)), (8, (4, 8)), (6, (4, 6)), (2, (2, 2))]
)
def test_level_splits_keep_the_official_row_indices(n_latent, splits):
    assert level_splits(n_latent) == splits


def test_tiny_generators_get_their_own_sizes(tiny, gen64):
    m32 = LevelsMapper.for_generator(tiny, seed=0)  # 32 px: 8 rows, no fine rows, so no fine parameters
    assert (m32.config.style_dim, m32.config.n_latent) == (32, 8)
    assert set(m32.groups) == {"coarse", "medium"}
    m64 = LevelsMapper.for_generator(gen64, seed=0)
    assert set(m64.groups) == set(GROUPS) and m64.config.ranges()["fine"] == (8, 10)
    w_plus = gen64.z_to_w_plus(torch.randn(3, 32), 0.7)
    with torch.no_grad():
        assert apply_mapper(m64, w_plus).shape == (3, 10, 32)
    with pytest.raises(ValueError, match=r"w_plus \[N, 8, 32\]"):
        m32(w_plus)


def test_seeded_initialisation_is_reproducible_and_leaves_the_global_rng_alone(gen64):
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = LevelsMapper.for_generator(gen64, seed=5)
    assert torch.equal(torch.rand(1), before)
    b = LevelsMapper.for_generator(gen64, seed=5)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


@pytest.mark.parametrize("off", GROUPS)
def test_switched_off_group_leaves_its_rows_unchanged(gen64, off):
    mapper = LevelsMapper.for_generator(gen64, groups=[g for g in GROUPS if g != off], seed=0)
    assert off not in mapper.groups
    w_plus = gen64.z_to_w_plus(torch.randn(2, 32), 0.7)
    with torch.no_grad():
        edited = apply_mapper(mapper, w_plus)
    for group, (start, stop) in mapper.config.ranges().items():
        same = torch.equal(edited[:, start:stop], w_plus[:, start:stop])
        assert same == (group == off), group
    assert torch.equal(apply_mapper(mapper, w_plus, strength=0.0), w_plus)


def test_applying_some_groups_edits_only_their_rows(gen64):
    mapper = LevelsMapper.for_generator(gen64, seed=0)
    w_plus = gen64.z_to_w_plus(torch.randn(2, 32), 0.7)
    with torch.no_grad():
        full = apply_mapper(mapper, w_plus)
        fine_only = apply_mapper(mapper, w_plus, groups=["fine"])
        assert torch.equal(apply_mapper(mapper, w_plus, groups=GROUPS), full)
        assert torch.equal(apply_mapper(mapper, w_plus, groups=[]), w_plus)
    assert torch.equal(fine_only[:, :8], w_plus[:, :8])  # coarse and medium rows: the source
    torch.testing.assert_close(fine_only[:, 8:], full[:, 8:])  # fine rows: the whole edit's
    assert not torch.equal(fine_only[:, 8:], w_plus[:, 8:])
    with pytest.raises(ValueError, match="unknown mapper groups"):
        apply_mapper(mapper, w_plus, groups=["fine", "ultra"])


def test_residual_is_one_tenth_of_the_mapper_output_times_strength(gen64):
    mapper = LevelsMapper.for_generator(gen64, seed=0)
    w_plus = torch.randn(2, 10, 32)
    with torch.no_grad():
        delta = mapper(w_plus)
        torch.testing.assert_close(apply_mapper(mapper, w_plus, 2.5), w_plus + 0.25 * delta)


def test_norm_axis_layers_is_the_official_quirk(gen64):
    """Officially PixelNorm runs over dim 1 of [N, k, D] (the rows), so a code with equal rows reaches the MLP
    as sign(w): scaling one feature by a positive factor changes nothing. The "features" axis does see it."""
    w = torch.randn(1, 32)
    w_scaled = w.clone()
    w_scaled[:, 0] *= 3.0
    w_plus, w_plus_scaled = gen64.w_to_w_plus(w), gen64.w_to_w_plus(w_scaled)
    with torch.no_grad():
        layers = LevelsMapper.for_generator(gen64, norm_axis="layers", seed=0)
        features = LevelsMapper.for_generator(gen64, norm_axis="features", seed=0)
        assert torch.allclose(layers(w_plus), layers(w_plus_scaled), atol=1e-5)
        assert not torch.allclose(features(w_plus), features(w_plus_scaled), atol=1e-5)


# ------------------------------------------------------------------------------------------- official files
def _official_state_dict(groups=GROUPS, dim=512, seed=0) -> dict[str, torch.Tensor]:
    """Random weights under the official key names: mapper.<course|medium|fine>_mapping.mapping.<1..4>.*,
    index 0 being the PixelNorm; EqualLinear stores weights as randn/lr_mul (here with non-zero biases)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for group in groups:
        for i in range(1, 5):
            prefix = f"mapper.{_OFFICIAL_NAMES[group]}_mapping.mapping.{i}"
            sd[f"{prefix}.weight"] = torch.randn(dim, dim, generator=g) / 0.01
            sd[f"{prefix}.bias"] = torch.randn(dim, generator=g)
    return sd


def _official_forward(sd: dict[str, torch.Tensor], w_plus: torch.Tensor) -> torch.Tensor:
    """The official LevelsMapper written out from the facts (an oracle independent of our module)."""
    parts = []
    for group, (start, stop) in (("course", (0, 4)), ("medium", (4, 8)), ("fine", (8, 18))):
        x = w_plus[:, start:stop]
        if f"mapper.{group}_mapping.mapping.1.weight" not in sd:
            parts.append(torch.zeros_like(x))
            continue
        x = x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)  # PixelNorm over dim 1
        for i in range(1, 5):
            weight = sd[f"mapper.{group}_mapping.mapping.{i}.weight"]
            bias = sd[f"mapper.{group}_mapping.mapping.{i}.bias"]
            x = x @ (weight * (0.01 / math.sqrt(weight.shape[1]))).t() + bias * 0.01  # bias on the last dim
            x = F.leaky_relu(x, 0.2) * math.sqrt(2)
        parts.append(x)
    return torch.cat(parts, dim=1)


def _official_opts(**overrides) -> dict:
    opts = {
        "mapper_type": "LevelsMapper",
        "no_coarse_mapper": False,
        "no_medium_mapper": False,
        "no_fine_mapper": False,
        "description": "purple hair",
        "stylegan_size": 1024,
        "learning_rate": 0.5,
        "clip_lambda": 1.0,
        "latent_l2_lambda": 0.8,
        "id_lambda": 0.1,
        "batch_size": 2,
        "exp_dir": "results",
        "checkpoint_path": None,
    }
    opts.update(overrides)
    return opts


@pytest.mark.parametrize("groups", [GROUPS, ("coarse", "medium")])
def test_official_file_loads_and_matches_the_official_forward(tmp_path, ffhq_like_generator, groups):
    sd = _official_state_dict(groups)
    decoder = {f"decoder.{k}": v for k, v in ffhq_like_generator.state_dict().items()}
    opts = _official_opts(no_fine_mapper="fine" not in groups)
    path = tmp_path / "purple_hair.pt"
    torch.save({"state_dict": {**sd, **decoder}, "opts": opts}, path)

    mapper = load_mapper(path, ffhq_like_generator)
    assert set(mapper.groups) == set(groups) and mapper.config.norm_axis == "layers"
    assert mapper.meta["text"] == "purple hair" and mapper.meta["format"] == "official"
    w_plus = ffhq_like_generator.z_to_w_plus(torch.randn(3, 512), 0.7).detach()
    w_plus = w_plus + 0.3 * torch.randn_like(w_plus)  # rows differ, as for e4e-inverted faces
    with torch.no_grad():
        ours = mapper(w_plus)
        torch.testing.assert_close(ours, _official_forward(sd, w_plus), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            apply_mapper(mapper, w_plus), w_plus + 0.1 * _official_forward(sd, w_plus), rtol=1e-5, atol=1e-5
        )

    # The same weights in our module, through our own file format, give the same outputs.
    save_mapper(mapper, tmp_path / "ours.pt", meta={"text": "purple hair"})
    again = load_mapper(tmp_path / "ours.pt", ffhq_like_generator)
    assert again.meta == {"text": "purple hair"}
    with torch.no_grad():
        assert torch.equal(again(w_plus), ours)


def test_official_file_without_decoder_or_opts_still_loads(tmp_path, ffhq_like_generator):
    sd = _official_state_dict()
    torch.save({"state_dict": sd}, tmp_path / "bare.pt")
    mapper = load_mapper(tmp_path / "bare.pt", ffhq_like_generator)
    w_plus = torch.randn(2, 18, 512)
    with torch.no_grad():
        torch.testing.assert_close(mapper(w_plus), _official_forward(sd, w_plus), rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------------- bad files
def _write(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_bad_files_give_clear_errors(tmp_path, ffhq_like_generator, tiny, tiny_generator_file):
    g = ffhq_like_generator
    with pytest.raises(FileNotFoundError, match="not found"):
        load_mapper(tmp_path / "missing.pt", g)

    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="latent mapper checkpoint.*text file"):
        load_mapper(tmp_path / "notes.pt", g)

    with pytest.raises(MapperCheckpointError, match="looks like a generator checkpoint"):
        load_mapper(tiny_generator_file, tiny)

    official = _write(
        tmp_path, "official.pt", {"state_dict": _official_state_dict(), "opts": _official_opts()}
    )
    with pytest.raises(MapperCheckpointError, match="works on 512-dim latents.*style_dim is 32"):
        load_mapper(official, tiny)

    sd = _official_state_dict()
    del sd["mapper.medium_mapping.mapping.3.bias"]
    with pytest.raises(
        MapperCheckpointError, match=r"1 keys missing \(mapper\.medium_mapping\.mapping\.3\.bias\)"
    ):
        load_mapper(_write(tmp_path, "missing_key.pt", {"state_dict": sd, "opts": _official_opts()}), g)

    sd = _official_state_dict()
    sd["mapper.fine_mapping.mapping.2.weight"] = torch.zeros(512, 256)
    with pytest.raises(
        MapperCheckpointError,
        match=r"mapper\.fine_mapping\.mapping\.2\.weight: expected \(512, 512\), found \(512, 256\)",
    ):
        load_mapper(_write(tmp_path, "shape.pt", {"state_dict": sd, "opts": _official_opts()}), g)

    with pytest.raises(MapperCheckpointError, match="no_fine_mapper.*has the fine group"):
        load_mapper(
            _write(
                tmp_path,
                "flags.pt",
                {"state_dict": _official_state_dict(), "opts": _official_opts(no_fine_mapper=True)},
            ),
            g,
        )

    single = {
        f"mapper.mapping.{i}.{p}": torch.zeros(512, 512) if p == "weight" else torch.zeros(512)
        for i in range(1, 5)
        for p in ("weight", "bias")
    }
    with pytest.raises(MapperCheckpointError, match="SingleMapper"):
        load_mapper(
            _write(
                tmp_path,
                "single.pt",
                {"state_dict": single, "opts": _official_opts(mapper_type="SingleMapper")},
            ),
            g,
        )

    # An official mapper for a 256 px generator (14 rows) on an 18-row generator.
    with pytest.raises(MapperCheckpointError, match="14 rows of 512.*18 rows of 512"):
        load_mapper(
            _write(
                tmp_path,
                "size.pt",
                {"state_dict": _official_state_dict(), "opts": _official_opts(stylegan_size=256)},
            ),
            g,
        )

    # Our own format, made for another generator.
    save_mapper(LevelsMapper.for_generator(tiny, seed=0), tmp_path / "m32.pt")
    with pytest.raises(MapperCheckpointError, match="8 rows of 32.*18 rows of 512"):
        load_mapper(tmp_path / "m32.pt", g)

    ours = torch.load(tmp_path / "m32.pt", weights_only=True)
    ours["state_dict"]["groups.coarse.layers.0.weight"] = torch.zeros(32, 16)
    with pytest.raises(
        MapperCheckpointError, match=r"groups\.coarse\.layers\.0\.weight: expected \(32, 32\)"
    ):
        load_mapper(_write(tmp_path, "bad_ours.pt", ours), tiny)
    ours["version"] = 99
    with pytest.raises(MapperCheckpointError, match="version 99"):
        load_mapper(_write(tmp_path, "v99.pt", ours), tiny)


# --------------------------------------------------------------------------------------------------- training
def _eval_clip_loss(generator, clip_model, mapper, text=TEXT) -> float:
    w_plus = sample_w_plus(generator, 16, seed=1234, truncation=0.7, stream=7)
    with torch.no_grad():
        img = generator.synthesis_w_plus(apply_mapper(mapper, w_plus))
        return float((1 - clip_model.encode_image(img) @ clip_model.encode_text([text]).t()).mean())


def test_training_reduces_the_clip_loss_on_the_text(tiny, tiny_clip):
    start = _eval_clip_loss(tiny, tiny_clip, LevelsMapper.for_generator(tiny, seed=3))
    source = _eval_clip_loss(tiny, tiny_clip, LevelsMapper(MapperConfig(32, 8, groups=())))
    mapper, history = _train(tiny, tiny_clip, steps=30, l2_weight=0.0)
    end = _eval_clip_loss(tiny, tiny_clip, mapper)
    assert len(history) == 30 and [r["step"] for r in history] == list(range(1, 31))
    assert end < start - 0.005 and end < source - 0.005, (source, start, end)
    # The held-out objective that picks among a prompt's runs agrees: lower after training, and its terms add up.
    check = {"clip_weight": 1.0, "l2_weight": 0.8, "n": 12, "batch": 5}
    before = validation_objective(LevelsMapper.for_generator(tiny, seed=3), tiny, tiny_clip, TEXT, **check)
    after = validation_objective(mapper, tiny, tiny_clip, TEXT, **check)
    assert after["clip"] < before["clip"] - 0.005 and set(after) == {"clip", "l2", "loss"}
    assert after["loss"] == pytest.approx(after["clip"] + 0.8 * after["l2"])
    assert validation_objective(mapper, tiny, tiny_clip, TEXT, **check) == after  # the same held-out sources
    # Only the mapper learned: the shared generator and CLIP got no gradients.
    assert all(p.grad is None for p in tiny.parameters())
    assert all(p.grad is None for p in tiny_clip.model.parameters())


def test_training_is_deterministic_resumable_and_cancellable(tmp_path, tiny, tiny_clip):
    straight, history = _train(tiny, tiny_clip, steps=6)

    path = tmp_path / "run.pt"
    calls = []
    progress = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled, match="stopped at step 3 of 6"):
        _train(
            tiny,
            tiny_clip,
            steps=6,
            checkpoint_path=path,
            should_stop=stop_after_three,
            progress=lambda done, total, stage: progress.append((done, total, stage)),
        )
    assert [p[:2] for p in progress] == [(1, 6), (2, 6), (3, 6)]
    assert progress[0][2].startswith("training mapper | loss ") and "clip " in progress[0][2]
    partial = load_mapper(path, tiny)  # a training checkpoint is also a mapper file
    assert partial.meta["steps"] == 3 and partial.meta["text"] == TEXT

    with pytest.raises(ValueError, match="other settings.*text"):
        _train(tiny, tiny_clip, steps=6, checkpoint_path=path, text="a bald face")

    resumed, resumed_history = _train(tiny, tiny_clip, steps=6, checkpoint_path=path)
    assert resumed_history == history
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert load_mapper(path, tiny).meta["steps"] == 6


def test_previews_identity_term_and_argument_checks(tiny, tiny_clip):
    previews = []
    _, history = _train(
        tiny,
        tiny_clip,
        steps=4,
        preview_every=2,
        preview_count=3,
        on_preview=lambda step, src, edit: previews.append((step, src.shape, edit.shape)),
    )
    assert previews == [(2, (3, 3, 32, 32), (3, 3, 32, 32)), (4, (3, 3, 32, 32), (3, 3, 32, 32))]
    _train(tiny, tiny_clip, steps=2, preview_every=1)  # a preview interval without a callback renders nothing

    seen = []

    def identity(img_edit, img_src):
        seen.append(img_src.requires_grad)
        return (img_edit - img_src).square().mean()

    _, history = _train(tiny, tiny_clip, steps=2, id_weight=0.5, identity=identity)
    assert all("id" in r for r in history) and seen == [False, False]

    class PooledIdentity(IdentityModel):  # an IdentityModel: its per-sample `loss` is averaged over the batch
        kind = "pooled pixels"

        def features(self, img):
            return F.adaptive_avg_pool2d(img, 4).flatten(1)

    _, history = _train(tiny, tiny_clip, steps=2, id_weight=0.5, identity=PooledIdentity())
    assert all(0 <= r["id"] < 2 for r in history)

    with pytest.raises(ValueError, match="needs an identity loss"):
        _train(tiny, tiny_clip, id_weight=0.1)
    with pytest.raises(ValueError, match="text is empty"):
        _train(tiny, tiny_clip, text="  ")
    with pytest.raises(ValueError, match="batch"):
        _train(tiny, tiny_clip, batch=0)
    with pytest.raises(ValueError, match="no mapper group"):
        _train(tiny, tiny_clip, groups=("fine",))  # a 32 px generator has no fine rows


def test_directional_term_follows_the_text_change_and_trains(tmp_path, tiny, tiny_clip):
    change = text_change_direction(tiny_clip, "a face", TEXT)
    expected = tiny_clip.encode_text([TEXT]) - tiny_clip.encode_text(["a face"])
    torch.testing.assert_close(change, expected / expected.norm())
    with pytest.raises(ValueError, match="no difference"):
        text_change_direction(tiny_clip, TEXT, TEXT)

    check = {"clip_weight": 0.0, "l2_weight": 0.8, "direction_weight": 1.0, "neutral": "a face", "n": 12,
             "batch": 6}
    before = validation_objective(LevelsMapper.for_generator(tiny, seed=3), tiny, tiny_clip, TEXT, **check)
    assert set(before) == {"clip", "l2", "dir", "loss"} and 0 <= before["dir"] <= 2
    assert before["loss"] == pytest.approx(0.8 * before["l2"] + before["dir"])
    # Trained on the directional term alone, the held-out images change more along the text's change.
    mapper, history = _train(tiny, tiny_clip, steps=30, clip_weight=0.0, l2_weight=0.0, direction_weight=1.0,
                             neutral="a face", checkpoint_path=tmp_path / "dir.pt")
    assert all(0 <= r["dir"] <= 2 for r in history)
    after = validation_objective(mapper, tiny, tiny_clip, TEXT, **check)
    assert after["dir"] < before["dir"] - 0.01, (before, after)
    with pytest.raises(ValueError, match="other settings.*direction_weight"):
        _train(tiny, tiny_clip, steps=31, clip_weight=0.0, l2_weight=0.0, direction_weight=2.0, neutral="a face",
               checkpoint_path=tmp_path / "dir.pt")
    with pytest.raises(ValueError, match="neutral text"):
        _train(tiny, tiny_clip, direction_weight=1.0, neutral=" ")


# -------------------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def tiny_models_dir(tmp_path, tiny, tiny_clip, monkeypatch):
    """A models folder where the default "toyfaces" bundle finds the tiny generator and CLIP."""
    folder = tmp_path / "models"
    folder.mkdir()
    save_generator(tiny, folder / "toyfaces-generator.pt")
    tiny_clip.save(folder / "toyfaces-clip.pt")
    monkeypatch.setenv("STYLECLIP_MODELS", str(folder))
    return folder


def test_cli_trains_and_applies_a_mapper(tmp_path, tiny_models_dir, tiny, capsys):
    out = tmp_path / "smile.pt"
    env = {**os.environ, "STYLECLIP_MODELS": str(tiny_models_dir), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "styleclip",
            "train-mapper",
            "--model",
            "toyfaces",
            "--text",
            "a smiling face",
            "--out",
            str(out),
            "--steps",
            "3",
            "--no-fine",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    assert line["steps"] == 3 and line["groups"] == ["coarse", "medium"] and not line["resumed"]
    # the model's identity network and default weight (model_zoo.MAPPER_ID_WEIGHT_TOYFACES)
    assert line["id_weight"] == MAPPER_ID_WEIGHT_TOYFACES and line["identity"] == "toyfaces-identity"
    assert "training mapper" in result.stderr
    # and the model's directional-loss weight (model_zoo.MAPPER_DIRECTION_WEIGHT_TOYFACES), recorded in the file
    assert line["direction_weight"] == MAPPER_DIRECTION_WEIGHT_TOYFACES > 0 and "dir" in line["final_losses_last10"]
    assert load_mapper(out, tiny).meta["direction_weight"] == MAPPER_DIRECTION_WEIGHT_TOYFACES

    png = tmp_path / "smile.png"
    assert (
        main(
            [
                "apply-mapper",
                "--model",
                "toyfaces",
                "--mapper",
                str(out),
                "--seed",
                "5",
                "--strength",
                "2",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out.strip())
    assert info["text"] == "a smiling face" and info["seed"] == 5
    image = np.asarray(Image.open(png))
    assert image.shape == (32, 32, 3)

    # The image is the seed's code edited with strength 2 at the bundle's truncation (1.0 for toyfaces).
    mapper = load_mapper(out, tiny)
    z = torch.from_numpy(np.random.RandomState(5).randn(1, 32).astype(np.float32))
    with torch.no_grad():
        img = tiny.synthesis_w_plus(apply_mapper(mapper, tiny.z_to_w_plus(z, 1.0), 2.0))
    expected = ((img[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(image, expected)

    (tmp_path / "junk.pt").write_text("junk")
    assert main(["apply-mapper", "--mapper", str(tmp_path / "junk.pt"), "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and "latent mapper" in err


def test_ship_mappers_trains_several_seeds_and_ships_the_best_held_out_run(tmp_path, tiny_models_dir, tiny,
                                                                         monkeypatch, capsys):
    from styleclip.toyfaces import ship_mappers

    shipped_dir = tmp_path / "shipped"
    monkeypatch.setattr(ship_mappers, "LOG_DIR", tmp_path / "runs")
    monkeypatch.setattr(ship_mappers, "mappers_dir", lambda model: shipped_dir)
    ship_mappers.main(["--only", "smiling", "--steps", "3", "--seeds", "0", "5", "--jobs", "2", "--direction-weight",
                       "0"])
    out = capsys.readouterr().out
    assert "smiling (seed 0): ok" in out and "smiling (seed 5): ok" in out
    lines = [line for line in out.splitlines() if "held-out" in line]
    assert len(lines) == 2 and sum("<- shipped" in line for line in lines) == 1
    losses = {int(line.split("seed ")[1].split(":")[0]): float(line.split(" loss ")[1].split()[0]) for line in lines}
    best = min(losses, key=losses.get)
    assert f"seed {best}:" in next(line for line in lines if "<- shipped" in line)
    shipped = load_mapper(shipped_dir / "smiling.pt", tiny)
    chosen = load_mapper(ship_mappers.run_path("toyfaces", "smiling", best), tiny)
    assert all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), chosen.state_dict().values()))
    assert ship_mappers.run_path("toyfaces", "smiling", 0).name == "smiling.pt"  # older runs resume as seed 0
    with pytest.raises(SystemExit):
        ship_mappers.main(["--only", "smiling", "--seeds", "1", "1"])
    # By default with the model's directional term: its own run file (the seed-0 run above keeps resuming), its
    # settings in the shipped file.
    ship_mappers.main(["--only", "smiling", "--steps", "2", "--seeds", "0", "--jobs", "1"])
    assert "smiling (seed 0): ok" in capsys.readouterr().out
    run = ship_mappers.run_path("toyfaces", "smiling", 0, MAPPER_DIRECTION_WEIGHT_TOYFACES)
    assert run.name == f"smiling_dir{MAPPER_DIRECTION_WEIGHT_TOYFACES:g}.pt" and run.exists()
    meta = load_mapper(shipped_dir / "smiling.pt", tiny).meta
    assert meta["direction_weight"] == MAPPER_DIRECTION_WEIGHT_TOYFACES and meta["neutral"] == "face"
    assert meta["steps"] == 2
