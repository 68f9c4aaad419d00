"""Tests of toyfaces captions: every value expressible, variety, held-out paraphrases never generated."""

from __future__ import annotations

import re

import numpy as np
import pytest

from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.captions import (
    FACE_WIDTH_BINS,
    HELDOUT_PHRASES,
    PHRASES,
    PROMPT_SETS,
    REWORDED_FRAMES,
    caption,
    is_adjective,
    zero_shot_prompts,
)
from styleclip.toyfaces.renderer import labels_of, sample_params, set_attribute

from tests.conftest import BASE_FACE as BASE  # noqa: E402


def _contains(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None


def _forms(phrases) -> list[str]:
    """Phrases as captions may write them: as is, or without the article in tag-list captions."""
    return [f for p in phrases for f in (p, p.split(" ", 1)[1] if p.startswith(("a ", "an ")) else p)]


def _random_captions(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [caption(sample_params(rng), rng) for _ in range(n)]


def test_phrase_tables_cover_every_value():
    for a in ATTRIBUTES:
        expected = set(a.values) if a.kind == "discrete" else set(FACE_WIDTH_BINS)
        assert set(PHRASES[a.name]) == expected, a.name
        assert set(HELDOUT_PHRASES[a.name]) == expected, a.name
        for value in expected:
            assert PHRASES[a.name][value] and HELDOUT_PHRASES[a.name][value], (a.name, value)
            assert not set(PHRASES[a.name][value]) & set(HELDOUT_PHRASES[a.name][value])


@pytest.mark.parametrize("attr", ATTRIBUTES, ids=lambda a: a.name)
def test_every_value_is_expressible(attr):
    values = attr.values if attr.kind == "discrete" else tuple(FACE_WIDTH_BINS)
    for value in values:
        if attr.kind == "discrete":
            params = set_attribute(BASE, attr.name, value)
        else:
            params = set_attribute(BASE, attr.name, 0.1 if value == "narrow" else 0.9)
        rng = np.random.default_rng(0)
        own = _forms(PHRASES[attr.name][value])
        others = [
            f
            for v, ps in PHRASES[attr.name].items()
            if v != value
            for f in _forms(ps)
            if not any(_contains(o, f) for o in own)
        ]
        for _ in range(20):
            text = caption(params, rng, mention=[attr.name])
            assert any(_contains(text, f) for f in own), (attr.name, value, text)
            assert not any(_contains(text, f) for f in others), (attr.name, value, text)


def test_captions_vary_and_look_like_english():
    rng = np.random.default_rng(1)
    p = sample_params(rng)
    texts = [caption(p, rng) for _ in range(200)]
    assert len(set(texts)) > 120
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) >= 2 and max(lengths) <= 60
    many = _random_captions(500, 2)
    assert sum(t.startswith("a photo of") for t in many) > 20
    assert sum(not t.startswith(("a photo of", "a picture of", "an image of")) for t in many) > 100
    assert all("  " not in t and not t.endswith(" ") for t in many)


def test_heldout_phrases_never_generated():
    texts = _random_captions(3000, 3)
    blob = "\n".join(texts)
    for attr, table in HELDOUT_PHRASES.items():
        for value, phrases in table.items():
            for phrase in phrases:
                assert not _contains(blob, phrase), (attr, value, phrase)


def test_reworded_frames_never_in_training_text():
    """The "reworded" zero-shot prompts must not be verbatim training text: no caption the CLIP trainer makes
    (captions wrapped in ImageNet templates included) contains any of their frames."""
    from styleclip.toyfaces.train_clip import make_caption

    rng = np.random.default_rng(11)
    texts = [make_caption(sample_params(rng), rng, template_prob=0.4) for _ in range(3000)]
    blob = "\n".join(texts)
    stems = {frame.split("{}")[0].strip() for frame in REWORDED_FRAMES}
    assert len(stems) == len(REWORDED_FRAMES)
    for stem in stems:
        assert stem not in blob, stem
    assert sum(t.startswith(("a ", "an ")) for t in texts) > 100  # the sample does hold ordinary captions


def test_caption_accepts_labels_and_hides_invisible_attributes():
    p = sample_params(np.random.default_rng(4))
    a = caption(p, np.random.default_rng(5))
    b = caption(labels_of(p), np.random.default_rng(5))
    assert a == b
    shades = set_attribute(set_attribute(BASE, "glasses", "sunglasses"), "eye_color", "green")
    rng = np.random.default_rng(6)
    assert not any(
        "green eyes" in caption(shades, rng) or "green-eyed" in caption(shades, rng) for _ in range(200)
    )


def test_zero_shot_prompts():
    for a in ATTRIBUTES:
        for prompt_set in PROMPT_SETS:
            prompts = zero_shot_prompts(a.name, prompt_set)
            table = HELDOUT_PHRASES if prompt_set == "paraphrase" else PHRASES
            assert set(prompts) == set(table[a.name])
            for value, texts in prompts.items():
                assert texts and all(any(p in t for p in table[a.name][value]) for t in texts)
        reworded = [t for texts in zero_shot_prompts(a.name, "reworded").values() for t in texts]
        assert all(any(t.startswith(f.split("{}")[0]) for f in REWORDED_FRAMES) for t in reworded), a.name
    smile = zero_shot_prompts("mouth")["smiling"]
    assert "a face with a big smile" in smile and "a smiling face" in smile
    smile = zero_shot_prompts("mouth", "reworded")["smiling"]
    assert "someone who has a big smile" in smile and "someone who looks smiling" in smile
    assert is_adjective("smiling") and not is_adjective("blond hair")
    with pytest.raises(ValueError):
        zero_shot_prompts("tail")
    with pytest.raises(ValueError, match="prompt_set"):
        zero_shot_prompts("hat", "heldout")


