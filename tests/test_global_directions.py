"""Global directions: the Δs math on hand-made cases, caching, stacking, precompute resume, file formats."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from styleclip.engines.global_directions import (
    GlobalDirections,
    NoChannelsError,
    auto_beta,
    beta_for_min_channels,
    style_direction,
)
from styleclip.engines.precompute import (
    RELEVANCE_SEED,
    Cancelled,
    channel_secants,
    compute_relevance,
    compute_s_stats,
    energy_basis,
    image_jacobian_directions,
    precompute,
    reference_relevance,
    sample_w,
)
from styleclip.engines.statistics import (
    GlobalStatistics,
    StatisticsError,
    WhitenedRelevance,
    conv_channel_index,
    load_official_s_mean_std,
    load_statistics,
)
from styleclip.imaging import img_to_images
from styleclip.models.clip_model import ClipModel, build_small_clip
from styleclip.models.generator import Generator
from tests.conftest import make_tiny_generator


def tiny_clip(resolution: int = 32) -> ClipModel:
    return ClipModel.from_model(build_small_clip(
        embed_dim=64, image_resolution=resolution, vision_layers=1, vision_width=64, vision_patch_size=8,
        transformer_width=64, transformer_heads=1, transformer_layers=1, seed=0))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    g = make_tiny_generator(size=32)
    clip_model = tiny_clip()
    out = tmp_path_factory.mktemp("pre") / "tiny"
    precompute(g, clip_model, out, n_stats=1000, n_images=2, generator_sha256="a" * 64, clip_sha256="b" * 64)
    return GlobalDirections(g, clip_model, load_statistics(out, g, "a" * 64, "b" * 64))


# ------------------------------------------------------------------------------------------ Δs math
def test_threshold_normalisation_and_std_scaling():
    r = torch.tensor([0.5, -0.2, 0.05, 0.3, -0.1])
    std = torch.tensor([2.0, 1.0, 1.0, 0.5, 3.0])
    delta, count = style_direction(r, beta=0.1, std_conv=std)
    # kept: |r| >= 0.1 → indices 0, 1, 3, 4; divided by max|r| = 0.5; times std
    torch.testing.assert_close(delta, torch.tensor([2.0, -0.4, 0.0, 0.3, -0.6]))
    assert count == 4
    assert float((delta / std).abs().max()) == pytest.approx(1.0)


def test_no_channel_passes_beta_gives_a_suggestion_not_nan():
    r = torch.linspace(-0.09, 0.09, 50)
    with pytest.raises(NoChannelsError) as info:
        style_direction(r, beta=0.15, std_conv=torch.ones(50))
    suggested = info.value.suggested_beta
    assert "Lower beta to" in str(info.value)
    delta, count = style_direction(r, beta=suggested, std_conv=torch.ones(50))
    assert count >= 10 and torch.isfinite(delta).all()
    assert beta_for_min_channels(r, 10) == suggested


def test_auto_beta_keeps_more_than_the_floor():
    # 30 channels at 0.25, 100 at 0.15, the rest tiny
    r = torch.cat([torch.full((30,), 0.25), torch.full((100,), 0.15), torch.full((500,), 0.01)])
    assert auto_beta(r, min_channels=20) == pytest.approx(0.25)
    assert auto_beta(r, min_channels=100) == pytest.approx(0.15)
    assert auto_beta(r, min_channels=1000) == pytest.approx(0.10)  # nothing qualifies → 0.1


def _stats_with_rows(rows: torch.Tensor, channels: int | None = None) -> GlobalStatistics:
    channels = rows.shape[0] if channels is None else channels
    unit = torch.nn.functional.normalize(rows.float(), dim=1)
    return GlobalStatistics(torch.zeros(channels), torch.ones(channels), unit, torch.arange(channels))


def test_whitened_relevance_discounts_an_axis_every_channel_shares():
    # 50 channels move CLIP's embedding along e0 only, one along e1, one along e2. A text direction mostly along
    # e0 with a specific e1 part: the plain cosine ranks the 50 generic channels first, the whitened one the e1
    # channel, and the e2 channel stays irrelevant in both.
    eye = torch.eye(3)
    stats = _stats_with_rows(torch.cat([eye[:1].repeat(50, 1), eye[1:2], eye[2:3]]))
    dt = torch.nn.functional.normalize(torch.tensor([0.8, 0.6, 0.0]), dim=0)
    official = stats.relevance_of(dt)
    whitened = WhitenedRelevance(stats, shrinkage=0.1)(dt)
    assert official[0] > official[50] and int(official.abs().argmax()) < 50
    assert int(whitened.abs().argmax()) == 50 and whitened[50] > 2 * whitened[0] > 0
    assert abs(float(whitened[51])) < 1e-6 and whitened.abs().max() <= 1 + 1e-6


def test_whitened_relevance_tends_to_the_official_one_as_shrinkage_grows():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(40, 8, generator=g) + torch.tensor([3.0] + [0.0] * 7)  # anisotropic rows
    stats = _stats_with_rows(rows, channels=48)  # 8 channels beyond the matrix, like a 5376-row official file
    dt = torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0)
    official = stats.relevance_of(dt)
    strong = WhitenedRelevance(stats, shrinkage=10.0)(dt)
    weak = WhitenedRelevance(stats, shrinkage=1e6)(dt)
    torch.testing.assert_close(weak, official, atol=1e-4, rtol=0)
    assert (strong - official).abs().max() > 0.01
    assert torch.count_nonzero(strong[40:]) == 0
    with pytest.raises(ValueError, match="shrinkage"):
        WhitenedRelevance(stats, shrinkage=0.0)


def test_engine_uses_the_whitened_metric_when_asked(engine):
    whitened = GlobalDirections(engine.generator, engine.clip, engine.stats, relevance_shrinkage=10.0)
    r_official, _ = engine.relevance("face", "smiling face")
    r_white, _ = whitened.relevance("face", "smiling face")
    assert engine.relevance_shrinkage is None and whitened.relevance_shrinkage == 10.0
    assert not torch.allclose(r_official, r_white)
    d = whitened.direction("face", "smiling face", beta=0.0)
    assert d.top_channels[0][2] == pytest.approx(float(r_white.abs().max()) * float(torch.sign(
        r_white[r_white.abs().argmax()])))


# ------------------------------------------------------------------------------------------ engine
def test_direction_leaves_torgb_channels_alone(engine):
    d = engine.direction("face", "smiling face", beta=0.0)
    g = engine.generator
    for layer in g.style_layers:
        part = d.delta_s[layer.offset: layer.offset + layer.dim]
        if layer.is_torgb:
            assert torch.count_nonzero(part) == 0
    assert d.num_channels == sum(layer.dim for layer in g.conv_layers)
    assert d.top_channels[0][0].startswith("conv")


def test_alpha_and_beta_changes_reuse_cached_work(engine):
    s = engine.source_s(engine.generator.z_to_w_plus(torch.randn(1, engine.generator.style_dim)))
    first = engine.edit(s, "face", "face with glasses", alpha=2.0, beta=0.05)
    calls = engine.clip.text_forward_calls
    second = engine.edit(s, "face", "face with glasses", alpha=-3.0, beta=0.05)
    assert second.direction is first.direction  # alpha: Δs not recomputed
    engine.edit(s, "face", "face with glasses", alpha=1.0, beta=0.08)
    assert engine.clip.text_forward_calls == calls  # beta: text not re-encoded
    torch.testing.assert_close(second.s - s, -3.0 * first.direction.delta_s[None])


def test_edits_stack(engine):
    s = engine.source_s(engine.generator.z_to_w_plus(torch.randn(1, engine.generator.style_dim)))
    a = engine.edit(s, "face", "smiling face", 3.0, 0.05)
    b = engine.edit(a.s, "face", "face with a beard", 2.0, 0.05)
    expected = s + 3.0 * a.direction.delta_s + 2.0 * b.direction.delta_s
    torch.testing.assert_close(b.s, expected)
    assert not torch.equal(b.img, a.img)


def test_equal_texts_are_refused(engine):
    with pytest.raises(ValueError, match="same"):
        engine.direction("face", " face ", 0.1)


# ------------------------------------------------------------------------------------------ precompute
@pytest.mark.parametrize("stop_at", [{"jacobian": 1, "refinement": 0}, {"jacobian": 2, "refinement": 0},
                                     {"jacobian": 3, "refinement": 1}, "probe"])
def test_relevance_resume_equals_an_uninterrupted_run(tmp_path, stop_at):
    # basis_images=1: the run is cut inside the full-Jacobian phase's end, inside the projected phase (whose basis
    # must come back from the saved Gram matrix), inside the refinement (whose channel choice must come back from
    # the saved probe), and in the middle of the first image's probe (nothing saved yet).
    g, clip_model = make_tiny_generator(size=32), tiny_clip()
    kwargs = {"n_images": 3, "basis_images": 1, "basis_energy": 0.99, "refine_channels": 5, "probe_images": 1,
              "s_stats": compute_s_stats(g, n=500)}
    full = compute_relevance(g, clip_model, **kwargs)
    calls = {"n": 0}

    def stop_early() -> bool:
        calls["n"] += 1
        if stop_at == "probe":
            return calls["n"] == 3  # the loop's check, then the probe's first chunks
        saved = tmp_path / "relevance.json"
        return saved.is_file() and json.loads(saved.read_text())["done"] == stop_at

    with pytest.raises(Cancelled, match="probing" if stop_at == "probe" else "stopped"):
        compute_relevance(g, clip_model, state_dir=tmp_path, should_stop=stop_early, **kwargs)
    assert (tmp_path / "relevance.json").is_file() == (stop_at != "probe")
    resumed = compute_relevance(g, clip_model, state_dir=tmp_path, **kwargs)
    torch.testing.assert_close(resumed, full, atol=1e-5, rtol=1e-5)
    assert torch.allclose(full.norm(dim=1), torch.ones(full.shape[0]), atol=1e-4)


def test_prefix_rendering_gives_the_full_render():
    g = make_tiny_generator(size=32)
    s = g.w_plus_to_s(g.z_to_w_plus(torch.randn(3, g.style_dim, generator=torch.Generator().manual_seed(1))))
    with torch.no_grad():
        for layer in (0, 2, 4, g.num_styles - 1):
            x, skip = g.synthesis_prefix([t[:1] for t in s], layer)  # one code's prefix serves edits of layer+
            edited = [t.clone() for t in s]
            edited[layer] = edited[layer] * torch.linspace(0.5, 1.5, 3)[:, None]
            for t in edited[:layer]:
                t.copy_(t[:1].expand_as(t))
            torch.testing.assert_close(g.synthesis(edited, start=(layer, x, skip)), g.synthesis(edited))
        torch.testing.assert_close(g.synthesis(s, until_resolution=16, start=(2, *g.synthesis_prefix(s, 2))),
                                   g.synthesis(s, until_resolution=16))


def test_channel_secants_follow_the_official_procedure():
    g, clip_model = make_tiny_generator(size=32), tiny_clip()
    mean, std = compute_s_stats(g, n=500)
    z = torch.randn(2, g.style_dim, generator=torch.Generator().manual_seed(2))
    s_flat = g.s_to_flat(g.w_plus_to_s(g.z_to_w_plus(z, truncation=0.7)))
    rows = torch.tensor([0, 3, 40, conv_channel_index(g).numel() - 1])
    found = channel_secants(g, clip_model, s_flat, mean, std, rows, chunk=2)
    for k, p in enumerate(conv_channel_index(g)[rows].tolist()):
        low, high = s_flat.clone(), s_flat.clone()
        low[:, p], high[:, p] = mean[p] - 5 * std[p], mean[p] + 5 * std[p]
        with torch.no_grad():
            diff = torch.stack([clip_model.encode_image_eval(img_to_images(g.synthesis(g.flat_to_s(x))))
                                for x in (low, high)]).diff(dim=0)[0]
        torch.testing.assert_close(found[:, k], diff / diff.norm(dim=1, keepdim=True), atol=2e-3, rtol=0)


def test_refinement_swaps_in_the_official_rows_of_the_least_linear_channels():
    g, clip_model = make_tiny_generator(size=32), tiny_clip()
    mean, std = compute_s_stats(g, n=500)
    base = compute_relevance(g, clip_model, n_images=3)
    info: dict = {}
    refined = compute_relevance(g, clip_model, n_images=3, refine_channels=6, probe_images=2, s_stats=(mean, std),
                                info=info)
    chosen = torch.tensor(info["refined_rows"])
    # the probe: per-image cosine between Jacobian column and official difference, on the first 2 images
    ws = sample_w(g, 2, RELEVANCE_SEED, 0.7)
    cosine = sum((image_jacobian_directions(g, clip_model, w)
                  * channel_secants(g, clip_model, g.s_to_flat(g.w_plus_to_s(g.w_to_w_plus(w[None]))), mean, std,
                                    torch.arange(base.shape[0]))[0]).sum(1) for w in ws)
    assert set(chosen.tolist()) == set(cosine.argsort()[:6].tolist())
    torch.testing.assert_close(info["probe_cosine"], (cosine / 2).float(), atol=1e-4, rtol=0)
    official = reference_relevance(g, clip_model, mean, std, n_images=3, channels=chosen)
    torch.testing.assert_close(refined[chosen], official, atol=1e-4, rtol=0)
    others = torch.ones(base.shape[0], dtype=torch.bool)
    others[chosen] = False
    torch.testing.assert_close(refined[others], base[others])
    with pytest.raises(ValueError, match="s_stats"):
        compute_relevance(g, clip_model, n_images=3, refine_channels=6)
    with pytest.raises(ValueError, match="probe_images must not exceed"):
        compute_relevance(g, clip_model, n_images=3, refine_channels=6, probe_images=2, s_stats=(mean, std),
                          basis_images=1, basis_energy=0.9)


def test_jacobian_through_a_complete_basis_equals_the_plain_jacobian():
    g, clip_model = make_tiny_generator(size=32), tiny_clip()
    w = g.mapping(torch.randn(1, g.style_dim, generator=torch.Generator().manual_seed(0)))[0]
    rotation, _ = torch.linalg.qr(torch.randn(clip_model.embed_dim, clip_model.embed_dim,
                                              generator=torch.Generator().manual_seed(1)))
    plain = image_jacobian_directions(g, clip_model, w, unit=False)
    rotated = image_jacobian_directions(g, clip_model, w, unit=False, basis=rotation.t())
    torch.testing.assert_close(rotated, plain, atol=1e-5, rtol=1e-4)
    half = image_jacobian_directions(g, clip_model, w, unit=False, basis=rotation.t()[: clip_model.embed_dim // 2])
    projector = rotation[:, : clip_model.embed_dim // 2] @ rotation[:, : clip_model.embed_dim // 2].t()
    torch.testing.assert_close(half, plain @ projector, atol=1e-5, rtol=1e-4)


def test_energy_basis_keeps_the_fewest_directions_holding_the_share():
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))
    gram = q @ torch.diag(torch.tensor([50.0, 30.0, 15.0, 4.0, 1.0, 0.0])) @ q.t()  # shares .5 .8 .95 .99 1
    assert energy_basis(gram, 0.94).shape == (3, 6)
    assert energy_basis(gram, 0.96).shape == (4, 6)
    assert energy_basis(gram, 1.0).shape[0] >= 5
    basis = energy_basis(gram, 0.45)
    torch.testing.assert_close(basis @ basis.t(), torch.eye(1), atol=1e-5, rtol=0)
    assert abs(float(basis[0] @ q[:, 0])) > 0.999  # the largest direction first


def test_manifest_reports_the_basis_rank_and_the_refined_rows(tmp_path):
    g, clip_model = make_tiny_generator(size=32), tiny_clip()
    info: dict = {}
    compute_relevance(g, clip_model, n_images=2, basis_images=2, basis_energy=0.9, info=info)
    assert info["basis_rank"] == 0  # every image took the full Jacobian
    stats = precompute(g, clip_model, tmp_path / "m", n_stats=500, n_images=2, basis_energy=0.9, basis_images=1,
                       refine_channels=0)
    assert 0 < stats.manifest["basis_rank"] < clip_model.embed_dim
    assert stats.manifest["basis_images"] == 1
    assert stats.manifest["refined_rows"] == [] and stats.manifest["probe_images"] == 0
    stats = precompute(g, clip_model, tmp_path / "r", n_stats=500, n_images=3, basis_images=1, refine_channels=3,
                       probe_images=1)  # the defaults otherwise: a basis and probe-chosen official rows
    assert len(stats.manifest["refined_rows"]) == 3 and stats.manifest["probe_images"] == 1
    assert load_statistics(tmp_path / "m", g).fs3.shape == (conv_channel_index(g).numel(), clip_model.embed_dim)
    with pytest.raises(ValueError, match="basis_energy"):
        compute_relevance(g, clip_model, n_images=2, basis_images=1, basis_energy=0.0)


def test_manifest_hash_mismatch_is_refused(tmp_path):
    g, clip_model = make_tiny_generator(size=32), tiny_clip()
    precompute(g, clip_model, tmp_path / "m", n_stats=500, n_images=1, generator_sha256="a" * 64)
    with pytest.raises(StatisticsError, match="another generator file"):
        load_statistics(tmp_path / "m", g, generator_sha256="c" * 64)
    with pytest.raises(StatisticsError, match="python -m styleclip precompute"):
        load_statistics(tmp_path / "missing", g)


# ------------------------------------------------------------------------------------------ official formats
@pytest.fixture(scope="module")
def ffhq_shaped():
    return Generator(1024)


@pytest.mark.parametrize("rows", [6048, 5376])
def test_official_fs3_and_s_mean_std_load(tmp_path, ffhq_shaped, rows):
    rng = np.random.default_rng(0)
    fs3 = rng.standard_normal((rows, 512)).astype(np.float32)
    np.save(tmp_path / "fs3.npy", fs3 / np.linalg.norm(fs3, axis=1, keepdims=True))
    dims = [layer.dim for layer in ffhq_shaped.style_layers]
    means = [rng.standard_normal(d).astype(np.float32) for d in dims]
    stds = [np.abs(rng.standard_normal(d)).astype(np.float32) for d in dims]
    with open(tmp_path / "S_mean_std", "wb") as f:
        pickle.dump([means, stds], f)
    stats = load_statistics(tmp_path, ffhq_shaped)
    assert stats.fs3.shape == (rows, 512) and stats.mean.shape == (9088,)
    torch.testing.assert_close(stats.std[512:1024], torch.from_numpy(stds[1]))
    r = stats.relevance_of(torch.nn.functional.normalize(torch.randn(512), dim=0))
    assert r.shape == (6048,) and torch.count_nonzero(r[rows:]) == 0


def test_s_mean_std_unpickler_refuses_anything_but_arrays(tmp_path, ffhq_shaped):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(tmp_path / "S_mean_std", "wb") as f:
        pickle.dump([[Evil()], []], f)
    with pytest.raises(StatisticsError, match="only numpy arrays"):
        load_official_s_mean_std(tmp_path / "S_mean_std", ffhq_shaped)


def test_fs3_with_wrong_rows_is_refused(tmp_path, ffhq_shaped):
    np.save(tmp_path / "fs3.npy", np.zeros((1000, 512), np.float32))
    with open(tmp_path / "S_mean_std", "wb") as f:
        dims = [layer.dim for layer in ffhq_shaped.style_layers]
        pickle.dump([[np.zeros(d, np.float32) for d in dims]] * 2, f)
    with pytest.raises(StatisticsError, match="1000 rows"):
        load_statistics(tmp_path, ffhq_shaped)
