"""The studio façade: input validation that the UI and API rely on."""

from __future__ import annotations

import pytest

from styleclip.studio import ALPHA_RANGE, BETA_RANGE, validate_range, validate_seed, validate_text


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


def test_seed_accepts_whole_floats():
    assert validate_seed(12.0) == 12
