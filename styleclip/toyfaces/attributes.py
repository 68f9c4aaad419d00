"""The attribute schema of the embedded "toyfaces" domain: names, values and sampling probabilities.

Every rendered face is described by the attributes below (what captions talk about and what the classifier
measures) plus nuisance variables that are not attributes (pose, size, position, lighting, shirt colour; see
`renderer.NUISANCES`). Discrete values are sampled with `probs`; continuous attributes live in [0, 1].

Visibility rules (the renderer is built so that most attributes are always visible):
- hair_color is always defined and visible, even for bald faces: the eyebrows, the beard/moustache and, for
  bald heads, the tufts of hair above the ears all use the hair colour; under a hat the hair shows below the
  hat (fringe, temples, sides, long hair, curls) and a bun sticks out above it.
- hair_style stays visible under a hat: short hair shows a fringe and temples below the brim, bald heads show
  bare temples and only side tufts, curls and long hair reach far outside the hat, and the bun sits above the
  hat.
- Two labels can be hidden, and `renderer.observable(params)` says so per image: `eyes` (open/closed) and
  `eye_color` are hidden behind sunglasses, and `eye_color` is hidden when the eyes are closed. Labels still
  exist for those images (the value stored in the params), but the classifier neither trains nor is scored on
  them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ATTRIBUTES",
    "Attribute",
    "attribute",
    "attribute_names",
    "discrete_attributes",
    "continuous_attributes",
]


@dataclass(frozen=True)
class Attribute:
    """One attribute of the toyfaces domain.

    Attributes:
        name: snake_case identifier, e.g. "hair_color".
        kind: "discrete" or "continuous".
        values: the value names of a discrete attribute (empty for continuous ones).
        probs: sampling probability of each value (sums to 1; empty for continuous ones).
    """

    name: str
    kind: str
    values: tuple[str, ...] = ()
    probs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("discrete", "continuous"):
            raise ValueError(f"{self.name}: kind must be 'discrete' or 'continuous', got {self.kind!r}")
        if self.kind == "discrete":
            if len(self.values) < 2 or len(self.values) != len(self.probs):
                raise ValueError(f"{self.name}: needs >= 2 values and one prob per value")
            if abs(sum(self.probs) - 1.0) > 1e-6:
                raise ValueError(f"{self.name}: probs sum to {sum(self.probs)}, not 1")
        elif self.values or self.probs:
            raise ValueError(f"{self.name}: a continuous attribute has no values or probs")

    @property
    def num_values(self) -> int:
        """Number of classes (1 for a continuous attribute, its single regression output)."""
        return len(self.values) if self.kind == "discrete" else 1

    def index(self, value: str) -> int:
        """Index of a discrete value; raises ValueError naming the attribute and its values."""
        try:
            return self.values.index(value)
        except ValueError:
            raise ValueError(f"{self.name}: unknown value {value!r}; expected one of {self.values}") from None


def _discrete(name: str, **value_probs: float) -> Attribute:
    return Attribute(name, "discrete", tuple(value_probs), tuple(value_probs.values()))


ATTRIBUTES: tuple[Attribute, ...] = (
    _discrete(
        "hair_color",
        black=0.12,
        brown=0.13,
        blond=0.12,
        red=0.10,
        gray=0.09,
        white=0.08,
        blue=0.09,
        purple=0.09,
        pink=0.09,
        green=0.09,
    ),
    _discrete("hair_style", bald=0.14, short=0.26, long=0.24, curly=0.18, bun=0.18),
    _discrete("skin_tone", light=0.30, tan=0.25, brown=0.25, dark=0.20),
    _discrete("eye_color", brown=0.40, blue=0.30, green=0.30),
    _discrete("eyes", open=0.78, closed=0.22),
    _discrete("mouth", smiling=0.35, neutral=0.28, frowning=0.17, surprised=0.20),
    _discrete("glasses", none=0.55, round=0.15, square=0.15, sunglasses=0.15),
    _discrete("hat", none=0.62, cap=0.19, beanie=0.19),
    _discrete("facial_hair", none=0.62, beard=0.19, moustache=0.19),
    _discrete("earrings", none=0.72, earrings=0.28),
    _discrete("lipstick", none=0.75, lipstick=0.25),
    _discrete("blush", none=0.75, blush=0.25),
    _discrete("nose", small=0.65, big=0.35),
    _discrete("age", young=0.70, old=0.30),
    _discrete(
        "background",
        white=0.10,
        gray=0.10,
        black=0.10,
        red=0.10,
        orange=0.10,
        yellow=0.10,
        green=0.10,
        blue=0.10,
        purple=0.10,
        pink=0.10,
    ),
    Attribute("face_width", "continuous"),
)

_BY_NAME = {a.name: a for a in ATTRIBUTES}


def attribute(name: str) -> Attribute:
    """The Attribute called `name`; raises ValueError listing the known names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown attribute {name!r}; expected one of {tuple(_BY_NAME)}") from None


def attribute_names() -> tuple[str, ...]:
    """All attribute names, in schema order."""
    return tuple(_BY_NAME)


def discrete_attributes() -> tuple[Attribute, ...]:
    """The discrete attributes, in schema order."""
    return tuple(a for a in ATTRIBUTES if a.kind == "discrete")


def continuous_attributes() -> tuple[Attribute, ...]:
    """The continuous attributes, in schema order."""
    return tuple(a for a in ATTRIBUTES if a.kind == "continuous")
