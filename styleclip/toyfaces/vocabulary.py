"""The words the embedded CLIP was trained on, and the words of a prompt it never saw.

The small CLIP learned its text tower from the toyfaces captions alone (`captions.caption`, sometimes wrapped in
CLIP's 80 ImageNet templates by `train_clip.make_caption`). Tokens outside those captions kept their random
initial embeddings, so a word it never saw ("grinning" for "smiling") reads as noise: zero-shot accuracy is 97.9%
with training words and 44% with out-of-vocabulary paraphrases (BENCHMARKS.md, "Embedded model"). The app names
such words so that people can rephrase.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from ..models.clip_model import IMAGENET_TEMPLATES
from .captions import PHRASES, caption
from .renderer import NUM_PARAMS, params_from_normal

__all__ = ["FUNCTION_WORDS", "training_vocabulary", "unknown_words", "words"]

# Grammar that names no attribute. Prompts may use it although no caption does: the reworded prompts, built from
# such frames ("someone who looks smiling"), are read as well as the training captions (97.7%).
_FUNCTION_WORDS_TEXT = """
a an the this that these those some any no not very more less most quite rather really so too
of in on at to for from by with without into onto over under near behind against around
and or but nor plus also as than then
is are was were be been being am has have had having does do did looks look looking seems seem
who whom whose which what where here there shown showing shows someone somebody one people
it its he she they them their his her him i me my you your we us our
s t
"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())
_CAPTION_SAMPLES = 3000  # 32,000 more captions add no word (tests/test_toyfaces_vocabulary.py)
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """The lower-case letter runs of `text`, in order ("Blond-haired face!" → ["blond", "haired", "face"])."""
    return _WORD.findall(text.lower())


@functools.lru_cache(maxsize=1)
def training_vocabulary(samples: int = _CAPTION_SAMPLES, seed: int = 0) -> frozenset[str]:
    """Every word of the CLIP's training text: the attribute phrases, the ImageNet templates, and `samples`
    captions of random faces (which cover the captions' own connecting words and phrase frames)."""
    vocab = {w for template in IMAGENET_TEMPLATES for w in words(template.replace("{}", " "))}
    vocab |= {w for table in PHRASES.values() for phrases in table.values() for p in phrases for w in words(p)}
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        vocab.update(words(caption(params_from_normal(rng.standard_normal(NUM_PARAMS)), rng)))
    return frozenset(vocab)


def unknown_words(text: str) -> list[str]:
    """The words of `text` the embedded CLIP never saw in training, each once, in order of appearance."""
    vocab = training_vocabulary()
    out: list[str] = []
    for word in words(text):
        if word not in vocab and word not in FUNCTION_WORDS and word not in out:
            out.append(word)
    return out
