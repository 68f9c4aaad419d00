"""The studio façade: input validation that the UI and API rely on, and how it carries an inverted photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from styleclip.studio import (
    ALPHA_RANGE,
    BETA_RANGE,
    validate_groups,
    validate_range,
    validate_seed,
    validate_text,
)


def test_text_validation():
    assert validate_text("  smiling face ", "target") == "smiling face"
    with pytest.raises(ValueError, match="neutral text is empty"):
        validate_text("   ", "neutral")
    with pytest.raises(ValueError, match="too long"):
        validate_text("x" * 301, "target")


@pytest.mark.parametrize("value", [-10.01, 10.5, float("nan"), "abc", None])
def test_alpha_out_of_range_is_refused(value):
    with pytest.raises(ValueError, match="alpha"):
        validate_range(value, "alpha", *ALPHA_RANGE)


def test_ranges_accept_their_bounds():
    assert validate_range(-10, "alpha", *ALPHA_RANGE) == -10.0
    assert validate_range("0.3", "beta", *BETA_RANGE) == 0.3


@pytest.mark.parametrize("seed", [-1, 2 ** 32, 1.5, "x"])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ValueError, match="seed"):
        validate_seed(seed)


def test_mapper_groups_come_back_in_layer_order_and_bad_choices_are_refused():
    assert validate_groups(["fine", " Coarse"]) == ("coarse", "fine")
    with pytest.raises(ValueError, match="at least one layer group"):
        validate_groups([])
    with pytest.raises(ValueError, match=r"Unknown layer group\(s\) \['ultra'\]"):
        validate_groups(["fine", "ultra"])


def test_seed_accepts_whole_floats():
    assert validate_seed(12.0) == 12


@pytest.fixture(scope="module")
def toyfaces_studio():
    from styleclip.studio import Studio

    torch.set_num_threads(1)
    return Studio()


def test_invert_photo_returns_the_refined_s_code_of_its_reconstruction(toyfaces_studio):
    from styleclip.imaging import img_to_image

    photo = toyfaces_studio.fresh_render("toyfaces", 3)
    w_plus, s_flat, recon, info = toyfaces_studio.invert_photo("toyfaces", photo, steps=3, s_steps=2)
    generator = toyfaces_studio.model("toyfaces").generator
    assert w_plus.shape == (1, generator.n_latent, generator.style_dim) and s_flat.shape == (1, generator.s_dim)
    assert info["s_steps"] == 2
    with torch.no_grad():
        rendered = img_to_image(generator.synthesis(generator.flat_to_s(s_flat))[0])
    assert np.abs(rendered.astype(int) - recon).max() <= 1  # uint8 rounding of float noise
    with torch.no_grad():
        w_code = generator.s_to_flat(generator.w_plus_to_s(w_plus))
    assert not torch.allclose(w_code, s_flat)  # the S stage moved the code off the W+ image
    with pytest.raises(ValueError, match="S refinement steps"):
        toyfaces_studio.invert_photo("toyfaces", photo, steps=3, s_steps=-1)


def test_apply_mapper_keeps_the_photo_s_refinement(toyfaces_studio):
    from styleclip.imaging import img_to_image

    path = next(iter(toyfaces_studio.shipped_mappers("toyfaces").values()))
    loaded = toyfaces_studio.model("toyfaces")
    generator = loaded.generator
    w_plus = loaded.source_w_plus(7)
    with torch.no_grad():
        s_exact = generator.s_to_flat(generator.w_plus_to_s(w_plus))
    [(_, src_plain, edit_plain)] = toyfaces_studio.apply_mapper("toyfaces", path, [], 1.0, w_plus_source=w_plus)
    [(_, src_same, edit_same)] = toyfaces_studio.apply_mapper("toyfaces", path, [], 1.0, w_plus_source=w_plus,
                                                             s_source=s_exact)
    assert np.abs(src_same.astype(int) - src_plain).max() <= 1
    assert np.abs(edit_same.astype(int) - edit_plain).max() <= 1
    s_refined = s_exact + 0.5 * torch.randn(s_exact.shape, generator=torch.Generator().manual_seed(0))
    [(_, src, edit)] = toyfaces_studio.apply_mapper("toyfaces", path, [], 1.0, w_plus_source=w_plus,
                                                   s_source=s_refined)
    with torch.no_grad():
        expected = img_to_image(generator.synthesis(generator.flat_to_s(s_refined))[0])
    assert np.abs(src.astype(int) - expected).max() <= 1
    assert np.abs(edit.astype(int) - src).mean() > 1  # still edited


def test_train_mapper_with_some_groups_leaves_the_other_rows_alone(toyfaces_studio, tmp_path):
    from styleclip.engines.mapper import apply_mapper, load_mapper

    out = tmp_path / "fine.pt"
    info = toyfaces_studio.train_mapper("toyfaces", "face with a purple background", out, steps=2, id_weight=0.0,
                                        groups=["fine"])
    assert info["groups"] == ["fine"]
    loaded = toyfaces_studio.model("toyfaces")
    mapper = load_mapper(out, loaded.generator)
    assert tuple(mapper.groups) == ("fine",)
    w_plus = loaded.source_w_plus(4)
    with torch.no_grad():
        edited = apply_mapper(mapper, w_plus)
    start = mapper.config.ranges()["fine"][0]
    assert torch.equal(edited[:, :start], w_plus[:, :start]) and not torch.equal(edited, w_plus)
    with pytest.raises(ValueError, match="at least one layer group"):
        toyfaces_studio.train_mapper("toyfaces", "smiling face", tmp_path / "none.pt", steps=2, groups=[])
    assert not (tmp_path / "none.pt").exists()


def test_each_model_bundle_picks_its_relevance_metric(toyfaces_studio):
    loaded = toyfaces_studio.model("toyfaces")
    engine = loaded.engine()
    assert engine.relevance_shrinkage == loaded.bundle.relevance_shrinkage is not None
    # the app's auto-beta and edits read the whitened metric; the official one stays one setting away
    from styleclip.engines.global_directions import GlobalDirections

    official = GlobalDirections(loaded.generator, loaded.clip, engine.stats)
    r_app, _ = engine.relevance("face", "smiling face")
    r_official, _ = official.relevance("face", "smiling face")
    assert not torch.allclose(r_app, r_official)
    info = toyfaces_studio.global_edit("toyfaces", 0, "face", "smiling face", 4.1, 0.15)[1]
    assert info["channels"] == engine.direction("face", "smiling face", 0.15).num_channels
    assert info["relevance_metric"] == f"whitened (shrinkage {loaded.bundle.relevance_shrinkage:g})"


def test_no_channel_message_never_suggests_a_beta_below_the_slider(toyfaces_studio, monkeypatch):
    from styleclip.engines.global_directions import NoChannelsError

    engine = toyfaces_studio.model("toyfaces").engine()

    def no_channels(*args, **kwargs):
        raise NoChannelsError(0.1, 0.05, 0.07)

    monkeypatch.setattr(engine, "edit", no_channels)
    with pytest.raises(NoChannelsError) as info:
        toyfaces_studio.global_edit("toyfaces", 0, "face", "face with a black background", 4.1, 0.1)
    assert f"lowest beta, {BETA_RANGE[0]:g}" in str(info.value) and "0.05" not in str(info.value)
    assert "Lower beta to 0.09" in str(NoChannelsError(0.1, 0.09, 0.095, lowest_beta=BETA_RANGE[0]))


def test_channel_mapper_trains_from_the_global_edit_and_applies_to_seeds_and_photos(toyfaces_studio, tmp_path):
    from styleclip.engines.channel_mapper import EXTRA_DEFAULT, load_channel_mapper
    from styleclip.imaging import img_to_image

    out = tmp_path / "black.pt"
    steps_seen = []
    info = toyfaces_studio.train_channel_mapper("toyfaces", "face", "face with black hair", out, steps=2,
                                                id_weight=0.0, on_step=lambda rec: steps_seen.append(rec["step"]))
    loaded = toyfaces_studio.model("toyfaces")
    engine = loaded.engine()
    direction = engine.direction("face", "face with black hair", info["beta"])
    assert info["kind"] == "channels" and steps_seen == [1, 2]
    assert info["channels"] == direction.num_channels + EXTRA_DEFAULT and info["extra"] == EXTRA_DEFAULT
    mapper = load_channel_mapper(out, loaded.generator)
    chosen = direction.delta_s.nonzero()[:, 0]
    assert torch.equal(mapper.positions[:len(chosen)], chosen)  # the global direction's channels come first

    [(seed, src, edit)] = toyfaces_studio.apply_mapper("toyfaces", out, [3], 1.0)
    assert seed == 3 and np.abs(edit.astype(int) - src).mean() > 1
    # a photo: the change lands on its S-refined code itself
    w_plus = loaded.source_w_plus(7)
    generator = loaded.generator
    with torch.no_grad():
        s_photo = generator.s_to_flat(generator.w_plus_to_s(w_plus))
        s_photo = s_photo + 0.3 * torch.randn(s_photo.shape, generator=torch.Generator().manual_seed(1))
        s_edit = s_photo.clone()
        s_edit[:, mapper.positions] += mapper(w_plus)
        expected = img_to_image(generator.synthesis(generator.flat_to_s(s_edit))[0])
    [(_, _, edit)] = toyfaces_studio.apply_mapper("toyfaces", out, [], 1.0, w_plus_source=w_plus, s_source=s_photo)
    assert np.abs(edit.astype(int) - expected).max() <= 1
    with pytest.raises(ValueError, match="are the same"):
        toyfaces_studio.train_channel_mapper("toyfaces", "face", " Face ", tmp_path / "same.pt", steps=1)
    with pytest.raises(ValueError, match="extra channels must be between"):
        toyfaces_studio.train_channel_mapper("toyfaces", "face", "smiling face", tmp_path / "x.pt", steps=1,
                                             extra=-3)
    assert not (tmp_path / "same.pt").exists() and not (tmp_path / "x.pt").exists()


def test_shipped_mappers_list_both_kinds_and_each_loads_as_its_kind(toyfaces_studio):
    from styleclip.engines.channel_mapper import ChannelMapper, load_any_mapper
    from styleclip.engines.mapper import LevelsMapper

    shipped = toyfaces_studio.shipped_mappers("toyfaces")
    channels = {name: path for name, path in shipped.items() if name.endswith(" (channels)")}
    assert channels and len(shipped) > len(channels)
    assert all(path.parent.name == "channels" for path in channels.values())
    generator = toyfaces_studio.model("toyfaces").generator
    for name, path in shipped.items():
        kind = ChannelMapper if name in channels else LevelsMapper
        assert isinstance(load_any_mapper(path, generator), kind), name
