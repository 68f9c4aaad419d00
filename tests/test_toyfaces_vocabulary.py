"""The embedded CLIP's training vocabulary, and the notice for words outside it."""

from __future__ import annotations

from types import SimpleNamespace

from styleclip.models import model_zoo
from styleclip.studio import unknown_words as studio_unknown_words
from styleclip.studio import unknown_words_note
from styleclip.toyfaces.captions import HELDOUT_PHRASES, zero_shot_prompts
from styleclip.toyfaces.vocabulary import training_vocabulary, unknown_words, words


def test_the_vocabulary_covers_every_training_caption():
    # Another seed and four times the captions find no word the shipped list lacks.
    assert training_vocabulary.__wrapped__(32_000, 1) <= training_vocabulary()


def test_training_style_and_reworded_prompts_pass_paraphrases_are_named():
    for prompt_set in ("train", "reworded"):
        for attribute in HELDOUT_PHRASES:
            for prompts in zero_shot_prompts(attribute, prompt_set).values():
                assert all(unknown_words(p) == [] for p in prompts), (prompt_set, attribute)
    phrases = [p for table in HELDOUT_PHRASES.values() for ps in table.values() for p in ps]
    flagged = [p for p in phrases if unknown_words(p)]
    # A few paraphrases recombine training words ("a lime backdrop": "lime" is a training colour word).
    assert len(flagged) >= 0.9 * len(phrases)


def test_unknown_words_are_listed_once_in_order():
    assert words("Blond-haired FACE, 2 eyes!") == ["blond", "haired", "face", "eyes"]
    assert unknown_words("a grinning, grinning face with raven hair") == ["grinning", "raven"]
    assert unknown_words("someone who looks smiling") == []


def test_the_studio_checks_closed_vocabularies_only():
    toy = SimpleNamespace(bundle=model_zoo.get_bundle("toyfaces"))
    ffhq = SimpleNamespace(bundle=model_zoo.get_bundle("ffhq"))
    assert studio_unknown_words(toy, "face", "grinning face with raven hair", "grinning") == ["grinning", "raven"]
    assert studio_unknown_words(ffhq, "face", "grinning face") == []  # ViT-B/32 has an open vocabulary
    assert unknown_words_note([]) is None
    assert "“grinning” in training and reads it as noise" in unknown_words_note(["grinning"])
    assert "“a”, “b”" in unknown_words_note(["a", "b"]) and "reads them" in unknown_words_note(["a", "b"])


def test_every_example_edit_uses_training_words():
    for bundle in model_zoo.list_bundles():
        loaded = SimpleNamespace(bundle=bundle)
        assert all(studio_unknown_words(loaded, *pair) == [] for pair in bundle.example_edits), bundle.name
    assert model_zoo.get_bundle("toyfaces").example_edits and model_zoo.get_bundle("ffhq").example_edits
