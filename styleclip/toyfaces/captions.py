"""Captions for toyfaces renders: phrases per attribute value, random natural captions, zero-shot prompts.

Two phrase sets exist. `PHRASES` is what `caption()` draws from (CLIP is trained on it); `HELDOUT_PHRASES`
holds paraphrases that `caption()` never produces, so a CLIP trained on these captions can be tested zero-shot
on wording it has not seen. Zero-shot prompts come in three sets (`PROMPT_SETS`): "train" (PHRASES in caption
frames), "reworded" (PHRASES in sentence frames that no training caption uses, e.g. "someone who has blond
hair": the words are known, the prompts are not verbatim training text) and "paraphrase" (HELDOUT_PHRASES,
words never seen in training). Phrases come in two grammatical slots: noun phrases used after "with" /
"wearing" (e.g. "blond hair", "round glasses") and adjectives used before the noun (e.g. "smiling", "bald");
`is_adjective` tells them apart. The continuous face_width is expressed only at its extremes ("narrow" below
0.25, "wide" above 0.75), and attributes hidden in the render (eye colour behind sunglasses or closed eyes)
are never mentioned.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from styleclip.toyfaces.attributes import ATTRIBUTES, attribute
from styleclip.toyfaces.renderer import FaceParams

__all__ = [
    "PHRASES",
    "HELDOUT_PHRASES",
    "PROMPT_SETS",
    "REWORDED_FRAMES",
    "caption",
    "zero_shot_prompts",
    "is_adjective",
    "values_of",
    "FACE_WIDTH_BINS",
]

# face_width in [0, 1] is described as "narrow" / "wide" only at the extremes.
FACE_WIDTH_BINS: dict[str, tuple[float, float]] = {"narrow": (0.0, 0.25), "wide": (0.75, 1.0)}

_HAIR_WORDS = {
    "black": ("black", "dark", "jet black"),
    "brown": ("brown", "brunette"),
    "blond": ("blond", "blonde", "yellow"),
    "red": ("red", "ginger"),
    "gray": ("gray", "grey"),
    "white": ("white", "snow white"),
    "blue": ("blue", "bright blue"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "bubblegum pink"),
    "green": ("green", "lime green"),
}

# value -> (noun phrases for "with ..." / "wearing ...", adjectives placed before the noun)
_Entry = tuple[tuple[str, ...], tuple[str, ...]]
_TRAIN: dict[str, dict[str, _Entry]] = {
    "hair_color": {
        c: (tuple(f"{w} hair" for w in words), (f"{words[0]}-haired",)) for c, words in _HAIR_WORDS.items()
    },
    "hair_style": {
        "bald": (("a bald head", "no hair on top"), ("bald", "bald-headed")),
        "short": (("short hair", "a short haircut", "spiky hair"), ("short-haired",)),
        "long": (("long hair", "long straight hair", "shoulder-length hair"), ("long-haired",)),
        "curly": (("curly hair", "curls", "an afro"), ("curly-haired",)),
        "bun": (("a bun", "a hair bun", "hair in a bun", "a top knot"), ()),
    },
    "skin_tone": {
        "light": (("light skin", "pale skin"), ("light-skinned", "pale")),
        "tan": (("tan skin", "tanned skin", "olive skin"), ("tanned",)),
        "brown": (("brown skin",), ("brown-skinned",)),
        "dark": (("dark skin", "deep brown skin"), ("dark-skinned",)),
    },
    "eye_color": {
        "brown": (("brown eyes",), ("brown-eyed",)),
        "blue": (("blue eyes",), ("blue-eyed",)),
        "green": (("green eyes",), ("green-eyed",)),
    },
    "eyes": {
        "open": (("open eyes", "eyes open", "wide open eyes"), ("wide-eyed",)),
        "closed": (("closed eyes", "eyes closed", "shut eyes"), ("sleeping", "sleepy")),
    },
    "mouth": {
        "smiling": (("a smile", "a big smile", "a happy expression"), ("smiling", "happy", "cheerful")),
        "neutral": (
            ("a neutral expression", "a closed mouth", "a straight face"),
            ("neutral", "expressionless", "serious"),
        ),
        "frowning": (("a frown", "a sad expression", "a grumpy look"), ("frowning", "sad", "unhappy")),
        "surprised": (
            ("an open mouth", "a surprised look", "a shocked expression"),
            ("surprised", "shocked", "astonished"),
        ),
    },
    "glasses": {
        "none": (("no glasses", "no eyewear"), ()),
        "round": (("round glasses", "circular glasses", "round spectacles"), ()),
        "square": (("square glasses", "rectangular glasses", "square-framed glasses"), ()),
        "sunglasses": (("sunglasses", "dark glasses", "shades"), ()),
    },
    "hat": {
        "none": (("no hat", "no headwear"), ("hatless",)),
        # "a hat" names both kinds: without it the text tower met the bare noun only in "no hat".
        "cap": (("a cap", "a baseball cap", "a navy cap", "a hat"), ()),
        "beanie": (("a beanie", "a knit hat", "a yellow beanie", "a wool hat", "a hat"), ()),
    },
    "facial_hair": {
        "none": (("no beard", "a clean-shaven face"), ("clean-shaven",)),
        "beard": (("a beard", "a full beard", "a thick beard"), ("bearded",)),
        "moustache": (("a moustache", "a mustache"), ("moustached",)),
    },
    "earrings": {
        "none": (("no earrings", "no jewelry"), ()),
        "earrings": (("earrings", "gold earrings", "hoop earrings"), ()),
    },
    "lipstick": {
        "none": (("no lipstick", "no makeup", "natural lips"), ()),
        "lipstick": (("lipstick", "red lipstick", "red lips"), ()),
    },
    "blush": {
        "none": (("no blush",), ()),
        "blush": (("blush", "rosy cheeks", "pink cheeks", "blushing cheeks"), ("blushing",)),
    },
    "nose": {
        "small": (("a small nose", "a tiny nose", "a little nose"), ()),
        "big": (("a big nose", "a large nose", "a round nose"), ()),
    },
    "age": {
        "young": (("a young face", "smooth skin"), ("young", "youthful")),
        "old": (("wrinkles", "a wrinkled face"), ("old", "elderly", "wrinkled")),
    },
    "background": {
        "white": (("a white background", "a white backdrop"), ()),
        "gray": (("a gray background", "a grey background", "a gray backdrop"), ()),
        "black": (("a black background", "a dark background", "a black backdrop"), ()),
        "red": (("a red background", "a red backdrop"), ()),
        "orange": (("an orange background", "an orange backdrop"), ()),
        "yellow": (("a yellow background", "a yellow backdrop"), ()),
        "green": (("a green background", "a green backdrop"), ()),
        "blue": (("a blue background", "a blue backdrop"), ()),
        "purple": (("a purple background", "a violet background", "a purple backdrop"), ()),
        "pink": (("a pink background", "a pink backdrop"), ()),
    },
    "face_width": {
        "narrow": (("a narrow face", "a thin face", "a slim face"), ("narrow-faced",)),
        "wide": (("a wide face", "a broad face"), ("wide-faced",)),
    },
}

_HELDOUT: dict[str, dict[str, _Entry]] = {
    "hair_color": {
        "black": (("raven hair", "ebony hair"), ()),
        "brown": (("chestnut hair", "coffee-colored hair"), ()),
        "blond": (("golden hair", "fair hair"), ()),
        "red": (("auburn hair", "copper-colored hair"), ()),
        "gray": (("silver hair", "ashen hair"), ()),
        "white": (("platinum hair", "snowy hair"), ()),
        "blue": (("azure hair", "cobalt hair"), ()),
        "purple": (("lavender hair", "plum-colored hair"), ()),
        "pink": (("rose-colored hair", "magenta hair"), ()),
        "green": (("emerald hair", "mint hair"), ()),
    },
    "hair_style": {
        "bald": (("a hairless scalp",), ("hairless",)),
        "short": (("a crew cut", "cropped hair"), ()),
        "long": (("flowing hair", "hair down to the shoulders"), ()),
        "curly": (("frizzy hair", "ringlets"), ()),
        "bun": (("an updo", "hair tied up"), ()),
    },
    "skin_tone": {
        "light": (("porcelain skin", "ivory skin"), ()),
        "tan": (("sun-kissed skin", "beige skin"), ()),
        "brown": (("caramel skin", "bronze skin"), ()),
        "dark": (("a dark complexion", "espresso skin"), ()),
    },
    "eye_color": {
        "brown": (("chocolate eyes", "amber eyes"), ()),
        "blue": (("sky-blue eyes", "sapphire eyes"), ()),
        "green": (("emerald eyes", "jade eyes"), ()),
    },
    "eyes": {"open": (("eyes wide awake", "alert eyes"), ()), "closed": (("eyelids shut",), ("dozing",))},
    "mouth": {
        "smiling": (("a toothy grin",), ("grinning", "beaming")),
        "neutral": (("a deadpan look", "a poker face"), ()),
        "frowning": (("a scowl",), ("gloomy", "sulky")),
        "surprised": (("a gaping mouth",), ("amazed", "gasping")),
    },
    "glasses": {
        "none": (("bare eyes without spectacles",), ()),
        "round": (("owl-like specs", "circle-rimmed specs"), ()),
        "square": (("boxy specs", "angular frames"), ()),
        "sunglasses": (("tinted lenses", "sunnies"), ()),
    },
    "hat": {
        "none": (("a bare head",), ()),
        "cap": (("a ball cap", "a peaked cap"), ()),
        "beanie": (("a toque", "a woolly hat"), ()),
    },
    "facial_hair": {
        "none": (("a smooth chin",), ("beardless",)),
        "beard": (("whiskers", "a hairy chin"), ()),
        "moustache": (("a bristly upper lip", "facial hair above the lip"), ()),
    },
    "earrings": {"none": (("bare earlobes",), ()), "earrings": (("ear hoops", "golden hoops"), ())},
    "lipstick": {"none": (("unpainted lips",), ()), "lipstick": (("crimson lips", "painted lips"), ())},
    "blush": {"none": (("plain cheeks",), ()), "blush": (("flushed cheeks", "rouge"), ())},
    "nose": {
        "small": (("a button nose", "a petite nose"), ()),
        "big": (("a bulbous nose", "a prominent nose"), ()),
    },
    "age": {
        "young": (("a youthful complexion",), ("teenage",)),
        "old": (("crow's feet",), ("senior", "aging")),
    },
    "background": {
        "white": (("a white wall", "a snowy backdrop"), ()),
        "gray": (("a gray wall", "a slate backdrop"), ()),
        "black": (("a black wall", "a pitch-dark backdrop"), ()),
        "red": (("a red wall", "a scarlet backdrop"), ()),
        "orange": (("an orange wall", "a tangerine backdrop"), ()),
        "yellow": (("a yellow wall", "a lemon backdrop"), ()),
        "green": (("a green wall", "a lime backdrop"), ()),
        "blue": (("a blue wall", "a cerulean backdrop"), ()),
        "purple": (("a purple wall", "a lilac backdrop"), ()),
        "pink": (("a pink wall", "a fuchsia backdrop"), ()),
    },
    "face_width": {
        "narrow": (("an elongated face", "a long face"), ()),
        "wide": (("a chubby face", "full cheeks"), ()),
    },
}

PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    a: {v: nouns + adjs for v, (nouns, adjs) in d.items()} for a, d in _TRAIN.items()
}
HELDOUT_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    a: {v: nouns + adjs for v, (nouns, adjs) in d.items()} for a, d in _HELDOUT.items()
}
_ADJECTIVES = frozenset(
    x for table in (_TRAIN, _HELDOUT) for d in table.values() for _, adjs in d.values() for x in adjs
)

_WEARABLE = frozenset({"glasses", "hat", "earrings", "lipstick"})  # also read after "wearing"
# Absent accessories and default looks are mentioned less often than what stands out.
_LOW_WEIGHT = {"none": 0.3, "open": 0.3, "young": 0.5, "small": 0.5}
_NOUNS = ("person", "face", "cartoon face", "cartoon person", "character", "cartoon character", "avatar")
_PREFIXES = (
    "",
    "",
    "a photo of ",
    "a picture of ",
    "an image of ",
    "a drawing of ",
    "an illustration of ",
    "a cartoon of ",
    "a rendering of ",
)
_BACKGROUND_PREPS = ("with", "on", "against", "in front of")


def is_adjective(phrase: str) -> bool:
    """True when a phrase of PHRASES / HELDOUT_PHRASES goes before the noun ("smiling"), not after "with"."""
    return phrase in _ADJECTIVES


def values_of(labels_or_params: FaceParams | Mapping[str, object]) -> dict[str, str | float]:
    """Attribute values by name (discrete ones as value names) from FaceParams, labels_of() or value names."""
    out: dict[str, str | float] = {}
    for attr in ATTRIBUTES:
        if isinstance(labels_or_params, FaceParams):
            v = getattr(labels_or_params, attr.name)
        else:
            if attr.name not in labels_or_params:
                continue
            v = labels_or_params[attr.name]
        if attr.kind == "discrete" and not isinstance(v, str):
            v = attr.values[int(v)]  # type: ignore[call-overload]
        out[attr.name] = v if isinstance(v, str) else float(v)  # type: ignore[arg-type]
    return out


def _describable(values: Mapping[str, str | float]) -> dict[str, str]:
    """Attribute -> value name that captions may use: visible attributes only, face_width at its extremes."""
    out = {k: v for k, v in values.items() if isinstance(v, str)}
    if out.get("glasses") == "sunglasses":  # same visibility rules as renderer.observable
        out.pop("eyes", None)
        out.pop("eye_color", None)
    if out.get("eyes") == "closed":
        out.pop("eye_color", None)
    fw = values.get("face_width")
    if isinstance(fw, float):
        for name, (lo, hi) in FACE_WIDTH_BINS.items():
            if lo <= fw <= hi:
                out["face_width"] = name
    return out


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(items: list[str], rng: np.random.Generator) -> str:
    if len(items) == 1:
        return items[0]
    if len(items) <= 3 and rng.random() < 0.25:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def caption(
    labels_or_params: FaceParams | Mapping[str, object],
    rng: np.random.Generator,
    mention: tuple[str, ...] | list[str] | None = None,
) -> str:
    """A random natural-language caption of a face, mentioning a random subset of its attributes.

    Args:
        labels_or_params: FaceParams, a labels_of() dict (indices / floats) or a dict of value names.
        rng: source of randomness (the caption is a deterministic function of the rng state).
        mention: attribute names to mention (all of them, in random order); None picks 1..n at random.

    Returns:
        A lower-case English caption, e.g. "a photo of a smiling person with blond hair on a green backdrop".
    """
    values = _describable(values_of(labels_or_params))
    if mention is None:
        names = list(values)
        weights = np.array([_LOW_WEIGHT.get(values[n], 1.0) for n in names])
        k = int(min(len(names), 1 + rng.poisson(2.2)))
        chosen = list(rng.choice(len(names), size=k, replace=False, p=weights / weights.sum()))
        mention = [names[i] for i in chosen]
    else:
        mention = [m for m in mention if m in values]
        attribute_order = rng.permutation(len(mention))
        mention = [mention[i] for i in attribute_order]
        for m in mention:
            attribute(m)
    if not mention:
        return _pick(_PREFIXES, rng) + f"a {_pick(_NOUNS, rng)}"

    adjs: list[str] = []
    withs: list[str] = []
    wears: list[str] = []
    background = None
    if "hair_color" in mention and "hair_style" in mention and rng.random() < 0.6:
        kind, text = _combined_hair(values["hair_color"], values["hair_style"], rng)
        (adjs if kind == "adj" else withs).append(text)
        if kind == "adj":  # bald: the colour goes with the hair left on the sides
            withs.append(f"{_pick(_HAIR_WORDS[values['hair_color']], rng)} hair on the sides")
        mention = [m for m in mention if m not in ("hair_color", "hair_style")]
    for name in mention:
        value = values[name]
        nouns, adj_options = _TRAIN[name][value]
        if name == "background":
            background = _pick(nouns, rng)
        elif adj_options and (not nouns or rng.random() < 0.5):
            adjs.append(_pick(adj_options, rng))
        elif name in _WEARABLE and value != "none" and rng.random() < 0.5:
            wears.append(_pick(nouns, rng))
        else:
            withs.append(_pick(nouns, rng))

    parts = withs + wears + ([background] if background else [])
    # Tag-list style, as in many alt texts; from two tags on, since a lone bare noun ("hat") says little.
    if rng.random() < 0.12 and not adjs and len(parts) >= 2:
        return ", ".join(_strip_article(p) for p in parts)

    nouns = _NOUNS
    if any("face" in w for w in withs):  # avoid "a face with a wide face"
        nouns = tuple(n for n in _NOUNS if "face" not in n)
    noun = _pick(nouns, rng)
    prefix = _pick(_PREFIXES, rng)
    if "cartoon" in prefix:
        noun = noun.replace("cartoon ", "")
    rng.shuffle(adjs)
    head = " ".join(adjs[:2] + [noun])
    text = prefix + f"{_article(head)} {head}"
    rest_adjs = adjs[2:]
    rng.shuffle(withs)
    if withs:
        text += " with " + _join(withs, rng)
    if wears:
        text += (" wearing " if not withs or rng.random() < 0.5 else " and wearing ") + _join(wears, rng)
    if rest_adjs:
        text += f", {_join(rest_adjs, rng)}"
    if background:
        prep = _pick(_BACKGROUND_PREPS, rng)
        if prep == "with" and withs:
            text += f" and {background}"
        else:
            text += f" {prep} {background}"
    return text


def _strip_article(phrase: str) -> str:
    for a in ("a ", "an "):
        if phrase.startswith(a):
            return phrase[len(a) :]
    return phrase


def _combined_hair(color: str, style: str, rng: np.random.Generator) -> tuple[str, str]:
    """A phrase naming hair colour and style together: ("with", "long red hair") or ("adj", "bald")."""
    c = _pick(_HAIR_WORDS[color], rng)
    if style == "bald":
        return "adj", _pick(("bald", "bald-headed"), rng)
    if style == "bun":
        return "with", _pick((f"{c} hair in a bun", f"{_article(c)} {c} bun", f"{c} hair tied in a bun"), rng)
    word = {"short": ("short", "spiky"), "long": ("long", "long straight"), "curly": ("curly",)}[style]
    return "with", f"{_pick(word, rng)} {c} hair"


_WITH_TEMPLATES = ("a face with {}", "a photo of a person with {}", "a cartoon face with {}")
_ADJ_TEMPLATES = ("{} face", "a photo of {} person", "{} cartoon character")
# Frames whose openings ("someone who has", "this character is", …) occur in no caption that `caption()` or
# the CLIP trainer's prompt templates produce (tests/test_toyfaces_captions.py samples the training text).
_REWORDED_WITH_TEMPLATES = ("someone who has {}", "this character has {}", "the person shown here has {}")
_REWORDED_ADJ_TEMPLATES = ("someone who looks {}", "this character is {}", "the person shown here looks {}")
REWORDED_FRAMES = _REWORDED_WITH_TEMPLATES + _REWORDED_ADJ_TEMPLATES
PROMPT_SETS = ("train", "reworded", "paraphrase")


def zero_shot_prompts(attribute_name: str, prompt_set: str = "train") -> dict[str, list[str]]:
    """Prompts for prompt-based (zero-shot) classification of one attribute.

    Args:
        attribute_name: an attribute of ATTRIBUTES (face_width gives the "narrow" / "wide" extremes).
        prompt_set: "train" (PHRASES in caption-like frames), "reworded" (PHRASES in frames no training
            caption uses) or "paraphrase" (HELDOUT_PHRASES, never seen in training captions, in caption-like
            frames).

    Returns:
        value name -> list of prompts, e.g. {"blond": ["a face with blond hair", ...], ...}.
    """
    attribute(attribute_name)
    if prompt_set not in PROMPT_SETS:
        raise ValueError(f"prompt_set must be one of {PROMPT_SETS}, got {prompt_set!r}")
    table = HELDOUT_PHRASES if prompt_set == "paraphrase" else PHRASES
    with_frames, adj_frames = ((_REWORDED_WITH_TEMPLATES, _REWORDED_ADJ_TEMPLATES) if prompt_set == "reworded"
                               else (_WITH_TEMPLATES, _ADJ_TEMPLATES))
    out: dict[str, list[str]] = {}
    for value, phrases in table[attribute_name].items():
        prompts = []
        for p in phrases:
            if is_adjective(p):
                article = "" if prompt_set == "reworded" else f"{_article(p)} "
                prompts += [t.format(f"{article}{p}") for t in adj_frames]
            else:
                prompts += [t.format(p) for t in with_frames]
        out[value] = prompts
    return out
