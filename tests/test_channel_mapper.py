"""Channel mapper: channel selection, the untrained mapper equals the global edit, only its channels move, training
lowers the objective, deterministic resume and cancel, files (round trip, fp16, clear errors) and dispatch."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_clip, make_tiny_generator

from styleclip.engines.channel_mapper import (
    ChannelMapper,
    ChannelMapperConfig,
    apply_channel_mapper,
    load_any_mapper,
    load_channel_mapper,
    save_channel_mapper,
    select_channels,
    train_channel_mapper,
    validation_objective,
)
from styleclip.engines.mapper import Cancelled, LevelsMapper, MapperCheckpointError, sample_w_plus, save_mapper
from styleclip.engines.statistics import conv_channel_index

torch.set_num_threads(1)

NEUTRAL, TARGET = "face", "face with purple hair"


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_generator().eval()


@pytest.fixture(scope="module")
def tiny_clip():
    return make_tiny_clip()


def _channels(generator, k=12, alpha=2.0):
    """k conv channels (every third), a made-up global direction on them, and unit-ish std."""
    conv = conv_channel_index(generator)
    positions = conv[::3][:k]
    base = alpha * torch.linspace(-1, 1, k)
    scale = torch.full((k,), 0.5)
    return positions, base, scale


def _train(generator, clip_model, steps, **kwargs):
    positions, base, scale = _channels(generator)
    return train_channel_mapper(generator, clip_model, NEUTRAL, TARGET, positions, base, scale, steps=steps,
                                batch=2, lr=1e-2, **kwargs)


def test_select_channels_takes_the_global_direction_then_the_most_relevant_others():
    conv_index = torch.tensor([0, 1, 2, 3, 5, 6])  # flat position 4 is a ToRGB channel
    relevance = torch.tensor([0.1, -0.9, 0.3, 0.05, -0.5, 0.2])
    delta_s = torch.zeros(7)
    delta_s[[1, 5]] = torch.tensor([-2.0, -1.0])  # the global direction moved conv channels 1 and 4 (flat 1 and 5)
    std = torch.arange(7.0) + 1
    positions, base, scale = select_channels(relevance, delta_s, conv_index, std, alpha=3.0, extra=2)
    # first the direction's channels, then by |relevance| among the rest: conv 2 (0.3) and conv 5 (0.2) → flat 2, 6
    assert positions.tolist() == [1, 5, 2, 6]
    assert base.tolist() == [-6.0, -3.0, 0.0, 0.0] and scale.tolist() == [2.0, 6.0, 3.0, 7.0]
    everything, _, _ = select_channels(relevance, delta_s, conv_index, std, 3.0, extra=100)
    assert sorted(everything.tolist()) == conv_index.tolist()  # never a ToRGB channel, never twice
    alone, _, _ = select_channels(relevance, delta_s, conv_index, std, 3.0, extra=0)
    assert alone.tolist() == [1, 5]


def test_untrained_mapper_is_the_global_edit_and_moves_only_its_channels(tiny, tiny_clip):
    mapper, history = _train(tiny, tiny_clip, steps=0)
    assert history == []
    w_plus = sample_w_plus(tiny, 3, seed=5, truncation=0.7)
    s = tiny.s_to_flat(tiny.w_plus_to_s(w_plus))
    with torch.no_grad():
        edited = apply_channel_mapper(mapper, tiny, w_plus)
        half = apply_channel_mapper(mapper, tiny, w_plus, strength=0.5)
    expected = s.clone()
    expected[:, mapper.positions] += mapper.base
    assert torch.allclose(edited, expected, atol=1e-6)
    assert torch.allclose(half - s, 0.5 * (edited - s), atol=1e-6)

    trained, _ = _train(tiny, tiny_clip, steps=3)
    with torch.no_grad():
        moved = apply_channel_mapper(trained, tiny, w_plus) - s
    others = torch.ones(tiny.s_dim, dtype=torch.bool)
    others[trained.positions] = False
    assert torch.count_nonzero(moved[:, others]) == 0  # ToRGB and unchosen channels stay exactly
    assert not torch.allclose(moved[:, trained.positions], trained.base.expand(3, -1))  # it learned something


def _objective(generator, clip_model, mapper, n=8):
    """Mean CLIP loss toward TARGET on fixed held-out faces (the term that drives the edit)."""
    from styleclip.engines.precompute import clip_render_resolution

    w_plus = sample_w_plus(generator, n, seed=99, truncation=0.7, stream=2)
    target = clip_model.encode_text([TARGET])
    with torch.no_grad():
        s = apply_channel_mapper(mapper, generator, w_plus)
        img = generator.synthesis(generator.flat_to_s(s), until_resolution=clip_render_resolution(generator,
                                                                                                  clip_model))
        return float((1 - clip_model.encode_image(img) @ target.t()).mean())


def test_training_lowers_the_clip_loss_and_the_held_out_objective(tiny, tiny_clip):
    start, _ = _train(tiny, tiny_clip, steps=0)
    weights = {"direction_weight": 0.0, "residual_weight": 0.0}
    trained, history = _train(tiny, tiny_clip, steps=40, **weights)
    assert [r["step"] for r in history] == list(range(1, 41))
    assert {"loss", "clip", "dir", "residual"} <= set(history[0])
    assert _objective(tiny, tiny_clip, trained) < _objective(tiny, tiny_clip, start) - 1e-3
    before = validation_objective(start, tiny, tiny_clip, NEUTRAL, TARGET, n=8, batch=3, **weights)
    after = validation_objective(trained, tiny, tiny_clip, NEUTRAL, TARGET, n=8, batch=3, **weights)
    assert after["loss"] < before["loss"] - 1e-3 and before["residual"] == 0.0
    assert validation_objective(trained, tiny, tiny_clip, NEUTRAL, TARGET, n=8, batch=3, **weights) == after
    assert not trained.training


def test_training_is_deterministic_resumable_and_cancellable(tmp_path, tiny, tiny_clip):
    straight, history = _train(tiny, tiny_clip, steps=6)
    path = tmp_path / "run.pt"
    calls = []

    def stop_after_three():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled, match="stopped at step 3 of 6"):
        _train(tiny, tiny_clip, steps=6, checkpoint_path=path, should_stop=stop_after_three)
    assert path.exists() and not (tmp_path / "run.pt.tmp").exists()
    assert load_channel_mapper(path, tiny).meta["steps"] == 3  # a half-trained checkpoint is a usable file
    resumed, resumed_history = _train(tiny, tiny_clip, steps=6, checkpoint_path=path)
    assert [r["step"] for r in resumed_history] == list(range(1, 7))
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert resumed_history[-1]["loss"] == pytest.approx(history[-1]["loss"], abs=1e-5)
    with pytest.raises(ValueError, match="other settings.*lr"):
        positions, base, scale = _channels(tiny)
        train_channel_mapper(tiny, tiny_clip, NEUTRAL, TARGET, positions, base, scale, steps=8, batch=2, lr=5e-3,
                             checkpoint_path=path)
    with pytest.raises(ValueError, match="other settings.*positions"):
        positions, base, scale = _channels(tiny, k=10)
        train_channel_mapper(tiny, tiny_clip, NEUTRAL, TARGET, positions, base, scale, steps=8, batch=2, lr=1e-2,
                             checkpoint_path=path)


def test_previews_show_fixed_sources_and_their_edits(tiny, tiny_clip):
    previews = []
    _train(tiny, tiny_clip, steps=4, preview_every=2, preview_count=3,
           on_preview=lambda step, src, edit: previews.append((step, src.clone(), edit.clone())))
    assert [p[0] for p in previews] == [2, 4] and previews[0][1].shape == (3, 3, 32, 32)
    assert torch.equal(previews[0][1], previews[1][1])  # the same sources each time
    assert not torch.equal(previews[0][1], previews[0][2])  # edited from the first preview on (the global edit)
    _train(tiny, tiny_clip, steps=2, preview_every=1)  # a preview interval without a callback renders nothing


def test_arguments_are_checked(tiny, tiny_clip):
    positions, base, scale = _channels(tiny)
    for kwargs, message in [({"neutral": " "}, "needs both texts"), ({"steps": -1}, "steps must be"),
                            ({"lr": 0.0}, "lr must be"), ({"id_weight": 0.5}, "needs an identity loss")]:
        args = {"neutral": NEUTRAL, "steps": 1, "lr": 1e-3, **kwargs}
        with pytest.raises(ValueError, match=message):
            train_channel_mapper(tiny, tiny_clip, args.pop("neutral"), TARGET, positions, base, scale, **args)
    with pytest.raises(ValueError, match="no channels"):
        empty = torch.zeros(0)
        train_channel_mapper(tiny, tiny_clip, NEUTRAL, TARGET, empty.long(), empty, empty, steps=1)


def test_files_round_trip_in_half_precision_and_dispatch_by_kind(tmp_path, tiny, tiny_clip):
    mapper, _ = _train(tiny, tiny_clip, steps=2)
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_channel_mapper(mapper, full)
    save_channel_mapper(mapper, half, half=True)
    assert half.stat().st_size < full.stat().st_size
    w_plus = sample_w_plus(tiny, 2, seed=3, truncation=0.7)
    with torch.no_grad():
        want = apply_channel_mapper(mapper, tiny, w_plus)
        got_full = apply_channel_mapper(load_channel_mapper(full, tiny), tiny, w_plus)
        got_half = apply_channel_mapper(load_any_mapper(half, tiny), tiny, w_plus)
    assert torch.equal(got_full, want)
    assert torch.allclose(got_half, want, atol=2e-3)  # positions, base and scale stay exact; the MLP is fp16
    assert load_channel_mapper(full, tiny).meta["target"] == TARGET

    levels = tmp_path / "levels.pt"
    save_mapper(LevelsMapper.for_generator(tiny, seed=0), levels, meta={"text": TARGET})
    assert isinstance(load_any_mapper(levels, tiny), LevelsMapper)
    assert isinstance(load_any_mapper(full, tiny), ChannelMapper)
    with pytest.raises(MapperCheckpointError, match="not a channel mapper"):
        load_channel_mapper(levels, tiny)


def test_bad_files_give_clear_errors(tmp_path, tiny, tiny_clip):
    mapper, _ = _train(tiny, tiny_clip, steps=0)
    path = tmp_path / "m.pt"
    save_channel_mapper(mapper, path)
    other = make_tiny_generator(style_dim=16)  # another w width: the mapper belongs to its own generator
    with pytest.raises(MapperCheckpointError, match="w of 32 values.*has 16"):
        load_channel_mapper(path, other)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["net.4.weight"] = torch.zeros(5, 3)
    torch.save(ckpt, tmp_path / "shapes.pt")
    with pytest.raises(MapperCheckpointError, match=r"net.4.weight: expected \(12, 128\), found \(5, 3\)"):
        load_channel_mapper(tmp_path / "shapes.pt", tiny)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["positions"] = torch.full((12,), tiny.s_dim + 4)
    torch.save(ckpt, tmp_path / "positions.pt")
    with pytest.raises(MapperCheckpointError, match="positions must lie in"):
        load_channel_mapper(tmp_path / "positions.pt", tiny)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"] = {"style_dim": "wide"}
    torch.save(ckpt, tmp_path / "config.pt")
    with pytest.raises(MapperCheckpointError, match="config needs whole numbers"):
        load_channel_mapper(tmp_path / "config.pt", tiny)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        load_any_mapper(tmp_path / "junk.pt", tiny)
    torch.save({"g_ema": {}, "latent_avg": torch.zeros(4)}, tmp_path / "generator.pt")
    with pytest.raises(MapperCheckpointError, match="or a channel mapper.*looks like a generator checkpoint"):
        load_any_mapper(tmp_path / "generator.pt", tiny)  # the message names both kinds of mapper file


def test_config_and_module_check_their_shapes(tiny):
    config = ChannelMapperConfig(tiny.style_dim, tiny.n_latent, tiny.s_dim, channels=3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        ChannelMapper(config, torch.arange(4), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="distinct"):
        ChannelMapper(config, torch.tensor([4, 7, 4]), torch.zeros(3), torch.ones(3))
    mapper = ChannelMapper(config, torch.arange(3), torch.zeros(3), torch.ones(3))
    assert ChannelMapperConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="expected w_plus"):
        apply_channel_mapper(mapper, tiny, torch.zeros(1, tiny.n_latent + 1, tiny.style_dim))
