"""Tests of the toyfaces schema, renderer and dataset: determinism, labels, sampling, counterfactual edits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from styleclip.toyfaces.attributes import ATTRIBUTES, Attribute, attribute
from styleclip.toyfaces.dataset import labels_array, make_dataset, normals_for
from styleclip.toyfaces.renderer import (
    NUISANCES,
    NUM_PARAMS,
    labels_of,
    observable,
    params_from_normal,
    render,
    render_batch,
    sample_params,
    set_attribute,
)

from tests.conftest import BASE_FACE as BASE  # noqa: E402

# Where a change of each attribute may alter pixels (y0, y1, x0, x1 as fractions of the image), for BASE (no
# jitter). Earrings hang beside the face, so they get two boxes. None: anywhere (only "something changed").
_REGIONS: dict[str, list[tuple[float, float, float, float]] | None] = {
    "hair_color": [(0.0, 0.55, 0.0, 1.0)],
    "hair_style": None,
    "skin_tone": [(0.15, 1.0, 0.15, 0.85)],
    "eye_color": [(0.45, 0.65, 0.25, 0.75)],
    "eyes": [(0.45, 0.65, 0.25, 0.75)],
    "mouth": [(0.42, 0.85, 0.25, 0.75)],  # brows move with the expression
    "glasses": [(0.42, 0.7, 0.15, 0.85)],
    "hat": [(0.0, 0.35, 0.0, 1.0)],
    "facial_hair": [(0.5, 0.95, 0.15, 0.85)],
    "earrings": [(0.55, 0.75, 0.12, 0.32), (0.55, 0.75, 0.68, 0.88)],
    "lipstick": [(0.65, 0.82, 0.35, 0.65)],
    "blush": [(0.55, 0.72, 0.2, 0.8)],
    "nose": [(0.55, 0.72, 0.38, 0.62)],
    "age": [(0.3, 0.9, 0.2, 0.8)],
    "background": None,
    "face_width": None,
}


def test_schema():
    assert len(ATTRIBUTES) >= 15
    assert len(attribute("hair_color").values) >= 10
    assert len(attribute("background").values) >= 8
    for a in ATTRIBUTES:
        if a.kind == "discrete":
            assert min(a.probs) >= 0.05, a.name
    with pytest.raises(ValueError):
        Attribute("x", "discrete", ("a", "b"), (0.5, 0.6))
    with pytest.raises(ValueError):
        attribute("nope")


def test_render_shapes_and_determinism():
    rng = np.random.default_rng(0)
    p = sample_params(rng)
    for size in (64, 128):
        image = render(p, size)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, render(p, size))
    u = np.random.default_rng(1).standard_normal(NUM_PARAMS)
    assert params_from_normal(u) == params_from_normal(u.copy())
    np.testing.assert_array_equal(render(params_from_normal(u), 64), render(params_from_normal(u), 64))
    batch = render_batch([p, sample_params(rng)], 64)
    assert batch.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(batch[0], render(p, 64))
    assert np.abs(batch[0].astype(int) - batch[1].astype(int)).mean() > 5  # different faces differ


def test_different_seeds_differ():
    a = render_batch([sample_params(np.random.default_rng(s)) for s in range(4)], 64)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(a[i], a[j])


def test_labels_consistent_with_params():
    rng = np.random.default_rng(2)
    for _ in range(50):
        p = sample_params(rng)
        labels = labels_of(p)
        assert set(labels) == {a.name for a in ATTRIBUTES}
        for a in ATTRIBUTES:
            if a.kind == "discrete":
                assert a.values[labels[a.name]] == getattr(p, a.name)
            else:
                assert labels[a.name] == pytest.approx(getattr(p, a.name)) and 0.0 <= labels[a.name] <= 1.0


def test_params_from_normal_matches_target_probabilities():
    u = np.random.default_rng(3).standard_normal((6000, NUM_PARAMS))
    params = [params_from_normal(row) for row in u]
    for a in ATTRIBUTES:
        if a.kind == "discrete":
            freq = np.array([np.mean([getattr(p, a.name) == v for p in params]) for v in a.values])
            assert np.all(freq > 0), a.name
            np.testing.assert_allclose(freq, a.probs, atol=0.025, err_msg=a.name)
        else:
            x = np.array([getattr(p, a.name) for p in params])
            assert 0.0 <= x.min() and x.max() <= 1.0 and abs(x.mean() - 0.5) < 0.03
    for name, (lo, hi) in NUISANCES.items():
        x = np.array([getattr(p, name) for p in params])
        assert lo <= x.min() and x.max() <= hi, name
    # quantisation is monotone in u: the lowest normals give the first value, the highest the last
    lo, hi = params_from_normal(np.full(NUM_PARAMS, -6.0)), params_from_normal(np.full(NUM_PARAMS, 6.0))
    for a in ATTRIBUTES:
        if a.kind == "discrete":
            assert getattr(lo, a.name) == a.values[0] and getattr(hi, a.name) == a.values[-1]
    with pytest.raises(ValueError):
        params_from_normal(np.zeros(NUM_PARAMS - 1))


def test_set_attribute_changes_only_that_label():
    rng = np.random.default_rng(4)
    p = sample_params(rng)
    for a in ATTRIBUTES:
        new_value = (
            a.values[(a.index(getattr(p, a.name)) + 1) % len(a.values)] if a.kind == "discrete" else 0.9
        )
        q = set_attribute(p, a.name, new_value)
        before, after = labels_of(p), labels_of(q)
        for name in before:
            if name == a.name:
                assert after[name] == (a.index(new_value) if a.kind == "discrete" else pytest.approx(0.9))
            else:
                assert after[name] == before[name]
        for name in NUISANCES:
            assert getattr(q, name) == getattr(p, name)
    assert set_attribute(p, "glasses", 3).glasses == "sunglasses"
    with pytest.raises(ValueError):
        set_attribute(p, "glasses", "monocle")
    with pytest.raises(ValueError):
        set_attribute(p, "hat", 7)
    with pytest.raises(ValueError):
        dataclasses.replace(p, face_width=1.5)


def _in_regions(regions, size):
    mask = np.zeros((size, size), bool)
    for y0, y1, x0, x1 in regions:
        mask[int(y0 * size) : int(y1 * size), int(x0 * size) : int(x1 * size)] = True
    return mask


@pytest.mark.parametrize("attr", [a for a in ATTRIBUTES], ids=lambda a: a.name)
def test_each_value_changes_pixels_in_expected_region(attr):
    size = 128
    base_image = render(BASE, size).astype(int)
    values = attr.values if attr.kind == "discrete" else (0.0, 1.0)
    for value in values:
        if value == getattr(BASE, attr.name):
            continue
        changed = (
            np.abs(render(set_attribute(BASE, attr.name, value), size).astype(int) - base_image).max(-1) > 30
        )
        assert changed.sum() > 15, f"{attr.name}={value} barely changes the image"
        regions = _REGIONS[attr.name]
        if regions is not None:
            inside = (changed & _in_regions(regions, size)).sum() / changed.sum()
            assert inside > 0.9, f"{attr.name}={value}: only {inside:.0%} of the change is where expected"


def test_background_changes_corners():
    a = render(BASE, 64)
    b = render(set_attribute(BASE, "background", "yellow"), 64)
    for y, x in ((1, 1), (1, 62), (20, 2)):
        assert np.abs(a[y, x].astype(int) - b[y, x].astype(int)).max() > 50


def test_observable():
    assert all(observable(BASE).values())
    hidden = observable(set_attribute(BASE, "glasses", "sunglasses"))
    assert not hidden["eyes"] and not hidden["eye_color"] and hidden["hair_color"]
    closed = observable(set_attribute(BASE, "eyes", "closed"))
    assert closed["eyes"] and not closed["eye_color"]


def test_make_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLECLIP_DATA_DIR", str(tmp_path))
    images, labels, params = make_dataset(6, seed=11, size=32, workers=1)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert list(tmp_path.glob("toyfaces/*.npz"))
    again, labels2, params2 = make_dataset(6, seed=11, size=32, workers=1)  # from the cache
    np.testing.assert_array_equal(images, again)
    assert params == params2 and params == [params_from_normal(u) for u in normals_for(6, 11)]
    np.testing.assert_array_equal(images[2], render(params[2], 32))
    for name, v in labels_array(params).items():
        np.testing.assert_array_equal(v, labels[name])
        assert v.shape == (6,)
