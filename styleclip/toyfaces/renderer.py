"""Deterministic procedural renderer of cartoon faces with known attributes (the toyfaces domain).

A face is described by a frozen `FaceParams` (every attribute of `attributes.ATTRIBUTES` plus the nuisance
variables of `NUISANCES`). `params_from_normal` maps `NUM_PARAMS` standard normals to parameters
deterministically, which is how the embedded generator is distilled: G(z) learns
render(params_from_normal(z[:NUM_PARAMS])).

Drawing happens in "face units": the origin is the face centre, 1.0 is the image side, y points down. Every
shape is a polygon (or a circle) passed through one similarity transform (scale, roll, shift), drawn with PIL
at `_SUPERSAMPLE` times the output size and box-filtered down, so edges are anti-aliased. A global lighting
gradient is applied to the final pixels. Nothing is random: render(params) is a pure function of params.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from PIL import Image, ImageDraw

from styleclip.toyfaces.attributes import ATTRIBUTES, attribute

__all__ = [
    "FaceParams",
    "NUISANCES",
    "NUM_PARAMS",
    "RENDERER_VERSION",
    "params_from_normal",
    "sample_params",
    "render",
    "render_batch",
    "labels_of",
    "observable",
    "set_attribute",
]

# Nuisance variables (not attributes): name -> (low, high); Phi(u) is mapped linearly onto the range.
NUISANCES: dict[str, tuple[float, float]] = {
    "yaw": (-1.0, 1.0),  # features shift sideways by up to ~0.03 of the image
    "roll": (-8.0, 8.0),  # in-plane rotation, degrees
    "scale": (0.93, 1.05),  # overall face size
    "shift_x": (-0.035, 0.035),  # position jitter, fraction of the image side
    "shift_y": (-0.03, 0.03),
    "light_angle": (0.0, 2 * math.pi),  # direction of the lighting gradient
    "light_strength": (0.0, 0.14),  # relative brightness change from image centre to edge
    "brightness": (0.92, 1.06),  # global brightness multiplier
    "shirt_hue": (0.0, 1.0),  # hue of the (muted) shirt colour
}

NUM_PARAMS: int = len(ATTRIBUTES) + len(NUISANCES)

# Bumped whenever a change alters pixels or the normal -> params map; caches of renders are keyed by it.
RENDERER_VERSION: int = 1


@dataclass(frozen=True)
class FaceParams:
    """Everything that determines a rendered face: discrete values as names, continuous values as floats."""

    hair_color: str
    hair_style: str
    skin_tone: str
    eye_color: str
    eyes: str
    mouth: str
    glasses: str
    hat: str
    facial_hair: str
    earrings: str
    lipstick: str
    blush: str
    nose: str
    age: str
    background: str
    face_width: float
    yaw: float = 0.0
    roll: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    light_angle: float = 0.0
    light_strength: float = 0.0
    brightness: float = 1.0
    shirt_hue: float = 0.6

    def __post_init__(self) -> None:
        for attr in ATTRIBUTES:
            value = getattr(self, attr.name)
            if attr.kind == "discrete":
                attr.index(value)  # raises ValueError on an unknown value
            elif not 0.0 <= value <= 1.0:
                raise ValueError(f"{attr.name} must be in [0, 1], got {value!r}")


def _phi(u: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-u / math.sqrt(2.0))


def params_from_normal(u: np.ndarray) -> FaceParams:
    """Deterministic map from NUM_PARAMS standard normals to face parameters.

    Args:
        u: [NUM_PARAMS] standard normals (extra entries are ignored). Entry i < len(ATTRIBUTES) drives
            ATTRIBUTES[i] (discrete: Phi(u_i) quantised against the cumulative probs; continuous: Phi(u_i));
            the remaining entries drive NUISANCES in order (Phi(u) mapped linearly onto the range).

    Returns:
        The FaceParams.
    """
    u = np.asarray(u, dtype=np.float64).reshape(-1)
    if u.shape[0] < NUM_PARAMS:
        raise ValueError(f"params_from_normal needs {NUM_PARAMS} values, got {u.shape[0]}")
    kwargs: dict[str, str | float] = {}
    for i, attr in enumerate(ATTRIBUTES):
        p = _phi(float(u[i]))
        if attr.kind == "discrete":
            k = int(np.searchsorted(_cumprobs(attr.name), p, side="right"))
            kwargs[attr.name] = attr.values[min(k, len(attr.values) - 1)]
        else:
            kwargs[attr.name] = p
    for j, (name, (lo, hi)) in enumerate(NUISANCES.items()):
        kwargs[name] = lo + (hi - lo) * _phi(float(u[len(ATTRIBUTES) + j]))
    return FaceParams(**kwargs)  # type: ignore[arg-type]


@cache
def _cumprobs(name: str) -> np.ndarray:
    return np.cumsum(attribute(name).probs)[:-1]


def sample_params(rng: np.random.Generator) -> FaceParams:
    """Random face parameters: params_from_normal(rng.standard_normal(NUM_PARAMS))."""
    return params_from_normal(rng.standard_normal(NUM_PARAMS))


def labels_of(params: FaceParams) -> dict[str, int | float]:
    """Attribute labels: discrete -> index into Attribute.values, continuous -> float in [0, 1]."""
    return {
        a.name: a.index(getattr(params, a.name)) if a.kind == "discrete" else float(getattr(params, a.name))
        for a in ATTRIBUTES
    }


def observable(params: FaceParams) -> dict[str, bool]:
    """Whether each attribute can be seen in the render (see the visibility rules in attributes.py)."""
    visible = {a.name: True for a in ATTRIBUTES}
    if params.glasses == "sunglasses":
        visible["eyes"] = visible["eye_color"] = False
    if params.eyes == "closed":
        visible["eye_color"] = False
    return visible


def set_attribute(params: FaceParams, name: str, value: str | int | float) -> FaceParams:
    """A copy of params with one attribute changed (counterfactual edit); everything else is kept.

    Args:
        params: the original face.
        name: an attribute name from ATTRIBUTES.
        value: a value name or index for discrete attributes, a float in [0, 1] for continuous ones.
    """
    attr = attribute(name)
    if attr.kind == "discrete":
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= int(value) < len(attr.values):
                raise ValueError(f"{name}: index {value} out of range for {attr.values}")
            value = attr.values[int(value)]
        attr.index(str(value))
        return dataclasses.replace(params, **{name: str(value)})
    return dataclasses.replace(params, **{name: float(value)})


# ----------------------------------------------------------------------------------------------------------
# Palettes.

_SKIN = {"light": (250, 218, 190), "tan": (224, 172, 124), "brown": (164, 108, 70), "dark": (98, 64, 44)}
_HAIR = {
    "black": (40, 36, 38),
    "brown": (118, 74, 40),
    "blond": (240, 206, 110),
    "red": (200, 66, 32),
    "gray": (150, 150, 154),
    "white": (244, 244, 240),
    "blue": (50, 104, 224),
    "purple": (136, 62, 188),
    "pink": (248, 134, 186),
    "green": (56, 170, 82),
}
_EYE = {"brown": (122, 70, 28), "blue": (56, 140, 236), "green": (52, 176, 76)}
_BACKGROUND = {
    "white": (246, 246, 243),
    "gray": (156, 158, 162),
    "black": (40, 40, 46),
    "red": (216, 72, 70),
    "orange": (244, 152, 60),
    "yellow": (246, 222, 96),
    "green": (110, 194, 112),
    "blue": (100, 152, 234),
    "purple": (164, 112, 214),
    "pink": (244, 168, 206),
}
_INK = (30, 26, 30)  # outlines and glasses frames
_CAP = (40, 58, 122)
_CAP_BRIM = (30, 42, 92)
_BEANIE = (228, 166, 44)
_BEANIE_CUFF = (196, 136, 34)
_GOLD = (244, 192, 40)
_LIPSTICK = (216, 22, 60)
_MOUTH_INSIDE = (112, 30, 42)
_TEETH = (252, 252, 250)

_SUPERSAMPLE = 4
_CENTRE = (0.5, 0.54)  # face centre in image coordinates before jitter
_BASE_SCALE = 1.06  # face units -> image sides at scale 1


def _shade(color: tuple[int, int, int], k: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(c * k)))) for c in color)  # type: ignore[return-value]


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _outline_of(color: tuple[int, int, int]) -> tuple[int, int, int]:
    # Dark but tinted outlines read as cartoon ink without turning every region black; near-black regions get
    # a light rim instead, so black hair stays readable on a black background.
    if sum(color) < 150:
        return _mix(color, (200, 200, 210), 0.45)
    return _mix(_shade(color, 0.45), _INK, 0.35)


# ----------------------------------------------------------------------------------------------------------
# Drawing helpers in face units.


class _Canvas:
    """A supersampled PIL canvas drawing shapes given in face units through one similarity transform."""

    def __init__(self, size: int, params: FaceParams, background: tuple[int, int, int]) -> None:
        self.n = size * _SUPERSAMPLE
        self.image = Image.new("RGB", (self.n, self.n), background)
        self.draw = ImageDraw.Draw(self.image, "RGBA")  # "RGBA" mode blends fills that carry an alpha
        self.k = self.n * params.scale * _BASE_SCALE  # pixels per face unit
        angle = math.radians(params.roll)
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.ox = self.n * (_CENTRE[0] + params.shift_x)
        self.oy = self.n * (_CENTRE[1] + params.shift_y)
        self.line_px = max(1, round(0.0075 * self.k))  # cartoon outline width

    def px(self, pts: np.ndarray) -> list[tuple[float, float]]:
        x, y = pts[:, 0], pts[:, 1]
        xs = self.ox + self.k * (self.cos * x - self.sin * y)
        ys = self.oy + self.k * (self.sin * x + self.cos * y)
        return list(zip(xs.tolist(), ys.tolist(), strict=True))

    def width(self, w: float) -> int:
        return max(1, round(w * self.k))

    def poly(self, pts: np.ndarray, fill, outline=None, width: float | None = None) -> None:
        if outline is None:
            self.draw.polygon(self.px(pts), fill=fill)
        else:
            w = self.line_px if width is None else self.width(width)
            self.draw.polygon(self.px(pts), fill=fill, outline=outline, width=w)

    def line(self, pts: np.ndarray, color, width: float) -> None:
        self.draw.line(self.px(pts), fill=color, width=self.width(width), joint="curve")

    def circle(self, cx: float, cy: float, r: float, fill, outline=None, width: float | None = None) -> None:
        ((x, y),) = self.px(np.array([[cx, cy]]))
        rr = r * self.k
        w = self.line_px if width is None else self.width(width)
        self.draw.ellipse(
            (x - rr, y - rr, x + rr, y + rr),
            fill=fill,
            outline=outline,
            width=w if outline is not None else 1,
        )

    def ellipse(
        self, cx: float, cy: float, rx: float, ry: float, fill, outline=None, width: float | None = None
    ) -> None:
        self.poly(_ellipse_pts(cx, cy, rx, ry), fill, outline, width)

    def finish(self, size: int) -> Image.Image:
        return self.image.reduce(_SUPERSAMPLE)


def _ellipse_pts(
    cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * math.pi, n: int = 40
) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _curve(pts: Sequence[tuple[float, float]], n: int = 16) -> np.ndarray:
    """Quadratic/cubic Bezier through control points (3 or 4 of them)."""
    p = np.asarray(pts, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)[:, None]
    if len(p) == 3:
        return (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
    if len(p) == 4:
        return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]
    raise ValueError(f"_curve takes 3 or 4 control points, got {len(p)}")


def _mirror(pts: np.ndarray) -> np.ndarray:
    return pts * np.array([-1.0, 1.0])


# ----------------------------------------------------------------------------------------------------------
# Geometry of one face (all in face units).


@dataclass(frozen=True)
class _Geometry:
    rx: float  # face half-width
    ry: float  # face half-height
    eye_dx: float  # eye centre distance from the midline
    eye_y: float
    fx: float  # sideways shift of the inner features (yaw)


_RY = 0.33
_EYE_Y = 0.02
_BROW_Y = -0.075
_NOSE_Y = 0.10
_MOUTH_Y = 0.195
_HAT_Y = -0.235  # lower edge of both hats
_FRINGE_Y = -0.19


def _geometry(params: FaceParams) -> _Geometry:
    rx = 0.215 + 0.085 * params.face_width
    return _Geometry(rx=rx, ry=_RY, eye_dx=0.36 * rx + 0.02, eye_y=_EYE_Y, fx=0.028 * params.yaw)


def _face_outline(g: _Geometry, grow: float = 0.0, n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    s = np.sin(t)
    taper = 1.0 - 0.2 * np.clip(s, 0, None) ** 2  # narrower towards the chin
    return np.stack([(g.rx + grow) * np.cos(t) * taper, (g.ry + grow) * s], axis=1)


def _head_arc(
    g: _Geometry, grow_x: float, grow_y: float, a0: float, a1: float, n: int = 32, cy: float = 0.0
) -> np.ndarray:
    """Arc of the (untapered) head ellipse, angles in radians, y down (pi..2pi is the top half)."""
    return _ellipse_pts(0.0, cy, g.rx + grow_x, g.ry + grow_y, a0, a1, n)


# ----------------------------------------------------------------------------------------------------------
# Parts, in drawing order.


def _draw_shirt(c: _Canvas, params: FaceParams) -> None:
    r, gr, b = colorsys.hsv_to_rgb(params.shirt_hue, 0.35, 0.55)
    color = (int(r * 255), int(gr * 255), int(b * 255))
    left = [(-0.62, 0.62), (-0.55, 0.44), (-0.36, 0.375), (-0.13, 0.35), (0.0, 0.43)]
    pts = np.array(left + [(-x, y) for x, y in reversed(left[:-1])])
    c.poly(pts, color, _outline_of(color))


def _draw_back_hair(c: _Canvas, params: FaceParams, g: _Geometry, hair: tuple[int, int, int]) -> None:
    ink = _outline_of(hair)
    if params.hair_style == "long":
        top = _head_arc(g, 0.045, 0.05, math.pi, 2 * math.pi, 24, cy=-0.01)
        right = np.array(
            [
                [g.rx + 0.055, 0.12],
                [g.rx + 0.07, 0.30],
                [g.rx + 0.02, 0.40],
                [g.rx - 0.05, 0.38],
                [0.12, 0.33],
            ]
        )
        pts = np.concatenate([top, right, [[0.0, 0.30]], _mirror(right)[::-1]])
        c.poly(pts, hair, ink)
        for sx in (-1, 1):  # a few strands give it texture
            c.line(
                np.array(
                    [[sx * (g.rx + 0.02), 0.05], [sx * (g.rx + 0.035), 0.22], [sx * (g.rx + 0.0), 0.36]]
                ),
                ink,
                0.007,
            )
    elif params.hair_style == "curly":
        cloud_rx, cloud_ry, r = g.rx + 0.06, g.ry + 0.05, 0.058
        c.ellipse(0.0, -0.04, cloud_rx, cloud_ry * 0.9, hair)
        for a in np.linspace(math.radians(155), math.radians(385), 17):
            c.circle(cloud_rx * math.cos(a), -0.04 + cloud_ry * 0.92 * math.sin(a), r, hair, ink)
    elif params.hair_style == "bun":
        c.circle(0.0, -0.375, 0.082, hair, ink)
        c.line(_ellipse_pts(0.0, -0.375, 0.048, 0.038, 3.3, 6.0, 12), ink, 0.008)


def _draw_neck_and_ears(c: _Canvas, g: _Geometry, skin: tuple[int, int, int]) -> None:
    neck = _shade(skin, 0.86)
    c.poly(
        np.array([[-0.085, 0.2], [0.085, 0.2], [0.095, 0.40], [0.0, 0.43], [-0.095, 0.40]]),
        neck,
        _outline_of(neck),
    )
    for sx in (-1, 1):
        c.ellipse(sx * (g.rx - 0.006), 0.01, 0.045, 0.068, skin, _outline_of(skin))
        c.ellipse(sx * (g.rx + 0.008), 0.012, 0.018, 0.038, _shade(skin, 0.82))


def _draw_face(c: _Canvas, g: _Geometry, skin: tuple[int, int, int]) -> None:
    c.poly(_face_outline(g), skin, _outline_of(skin))


def _draw_blush(c: _Canvas, g: _Geometry) -> None:
    for sx in (-1, 1):
        c.ellipse(sx * (g.eye_dx + 0.015) + g.fx, 0.105, 0.048, 0.028, (255, 70, 110, 120))


def _draw_wrinkles(c: _Canvas, g: _Geometry, skin: tuple[int, int, int]) -> None:
    ink = _shade(skin, 0.6)
    w = 0.0095
    for y in (-0.128, -0.153):  # forehead
        xs = np.linspace(-0.085, 0.085, 9)
        c.line(np.stack([xs + g.fx * 0.5, y + 0.006 * np.cos(xs * 40)], 1), ink, w)
    for sx in (-1, 1):
        x0 = sx * (g.eye_dx + 0.072) + g.fx
        for dy in (-0.022, 0.0, 0.022):  # crow's feet
            c.line(np.array([[x0, g.eye_y + dy * 0.4], [x0 + sx * 0.034, g.eye_y + dy * 1.3]]), ink, w)
        ex = sx * g.eye_dx + g.fx  # bags under the eyes
        c.line(
            _curve([(ex - 0.04, g.eye_y + 0.07), (ex, g.eye_y + 0.095), (ex + 0.04, g.eye_y + 0.07)]), ink, w
        )
        c.line(
            _curve(
                [
                    (sx * 0.05 + g.fx, _NOSE_Y + 0.01),
                    (sx * 0.095 + g.fx, _NOSE_Y + 0.05),
                    (sx * 0.09 + g.fx, _MOUTH_Y + 0.02),
                ]
            ),
            ink,
            w * 1.2,
        )  # nasolabial folds
        c.line(np.array([[sx * 0.075 + g.fx, _MOUTH_Y + 0.04], [sx * 0.08 + g.fx, _MOUTH_Y + 0.075]]), ink, w)


def _draw_nose(c: _Canvas, params: FaceParams, g: _Geometry, skin: tuple[int, int, int]) -> None:
    x = g.fx * 1.3
    if params.nose == "big":
        fill = _shade(skin, 0.94)
        c.ellipse(x, _NOSE_Y, 0.05, 0.042, fill, _outline_of(skin), 0.009)
        c.ellipse(x - 0.012, _NOSE_Y - 0.015, 0.015, 0.01, (255, 255, 255, 90))
        for sx in (-1, 1):
            c.ellipse(x + sx * 0.02, _NOSE_Y + 0.022, 0.009, 0.006, _shade(skin, 0.5))
    else:
        c.line(
            _curve([(x - 0.018, _NOSE_Y + 0.008), (x, _NOSE_Y + 0.026), (x + 0.018, _NOSE_Y + 0.008)]),
            _shade(skin, 0.62),
            0.009,
        )


def _draw_eyes(c: _Canvas, params: FaceParams, g: _Geometry, skin: tuple[int, int, int]) -> None:
    ink = _INK
    for sx in (-1, 1):
        x, y = sx * g.eye_dx + g.fx, g.eye_y
        if params.eyes == "open":
            c.ellipse(x, y, 0.058, 0.066, (255, 255, 255), ink, 0.008)
            iris = _EYE[params.eye_color]
            c.circle(x + g.fx * 0.3, y + 0.006, 0.044, iris, _shade(iris, 0.55), 0.006)
            c.circle(x + g.fx * 0.3, y + 0.006, 0.02, (14, 12, 16))
            c.circle(x + g.fx * 0.3 - 0.016, y - 0.012, 0.011, (255, 255, 255))
            # upper lid line with a lash flick gives a friendlier cartoon eye
            c.line(_ellipse_pts(x, y, 0.06, 0.068, math.pi * 1.1, math.pi * 1.9, 12), ink, 0.012)
        else:
            c.line(_curve([(x - 0.055, y - 0.004), (x, y + 0.04), (x + 0.055, y - 0.004)]), ink, 0.014)
            c.line(np.array([[x + sx * 0.05, y + 0.002], [x + sx * 0.068, y - 0.012]]), ink, 0.01)


def _draw_brows(c: _Canvas, g: _Geometry, hair: tuple[int, int, int], mouth: str) -> None:
    lift = {"surprised": -0.018, "frowning": 0.006}.get(mouth, 0.0)
    for sx in (-1, 1):
        x = sx * g.eye_dx + g.fx
        inner = 0.014 if mouth == "frowning" else 0.0  # frowning brows slant down towards the nose
        pts = _curve(
            [
                (x - sx * 0.05, _BROW_Y + lift + 0.01 + inner),
                (x, _BROW_Y + lift - 0.022),
                (x + sx * 0.055, _BROW_Y + lift + 0.006),
            ],
            10,
        )
        c.line(pts, _outline_of(hair), 0.032)
        c.line(pts, hair, 0.021)


def _draw_front_hair(c: _Canvas, params: FaceParams, g: _Geometry, hair: tuple[int, int, int]) -> None:
    style, ink = params.hair_style, _outline_of(hair)
    if style == "bald":
        c.ellipse(-0.06, -0.25, 0.07, 0.035, (255, 255, 255, 80))  # shine on the scalp
        for sx in (-1, 1):
            for cy, r in ((-0.125, 0.034), (-0.085, 0.038), (-0.045, 0.032)):
                c.circle(sx * (g.rx + 0.006), cy, r, hair, ink)
        return
    if style == "curly":
        for x in np.linspace(-g.rx * 0.85, g.rx * 0.85, 7):
            y = -0.235 + 0.05 * (x / g.rx) ** 2
            c.circle(x, y, 0.045, hair, ink)
        for sx in (-1, 1):
            for cy in (-0.15, -0.07, 0.01, 0.09):
                c.circle(sx * (g.rx + 0.01), cy, 0.045, hair, ink)
        return
    top = _head_arc(g, 0.025, 0.03, math.pi - 0.08, 2 * math.pi + 0.08, 28, cy=-0.005)
    if style == "short":
        xs = np.linspace(g.rx * 0.74, -g.rx * 0.74, 9)
        spikes = np.stack([xs, _FRINGE_Y - 0.03 * (np.arange(9) % 2) - 0.02 * (xs / g.rx) ** 2], 1)
        pts = np.concatenate(
            [
                top,
                [[g.rx + 0.004, -0.03], [g.rx - 0.035, -0.03], [g.rx - 0.042, -0.15]],
                spikes,
                [[-(g.rx - 0.042), -0.15], [-(g.rx - 0.035), -0.03], [-(g.rx + 0.004), -0.03]],
            ]
        )
    elif style == "long":
        part = 0.04
        right = _curve([(g.rx - 0.02, 0.12), (g.rx - 0.045, -0.08), (g.rx - 0.12, -0.2), (part, -0.27)], 14)
        left = _curve([(part, -0.27), (-0.1, -0.26), (-(g.rx - 0.03), -0.2), (-(g.rx - 0.02), 0.12)], 14)
        pts = np.concatenate([top, [[g.rx + 0.03, 0.12]], right, left, [[-(g.rx + 0.03), 0.12]]])
    else:  # bun: hair pulled back, a high smooth hairline
        right = _curve([(g.rx - 0.01, -0.06), (g.rx - 0.06, -0.24), (0.0, -0.265), (0.0, -0.265)], 10)
        pts = np.concatenate(
            [top, [[g.rx + 0.004, -0.06]], right, _mirror(right)[::-1], [[-(g.rx + 0.004), -0.06]]]
        )
    c.poly(pts, hair, ink)
    c.line(
        _curve([(-0.05, -0.31), (-0.1, -0.33), (-0.16, -0.28)], 8), (255, 255, 255, 70), 0.014
    )  # highlight
    if style == "long":
        c.line(_curve([(part, -0.27), (part - 0.01, -0.31), (part - 0.005, -0.345)], 6), ink, 0.007)
    elif style == "bun":
        for x in (-0.08, 0.0, 0.08):
            c.line(_curve([(x * 1.2, -0.255), (x, -0.3), (x * 0.5, -0.34)], 8), ink, 0.006)


def _draw_facial_hair(c: _Canvas, params: FaceParams, g: _Geometry, hair: tuple[int, int, int]) -> None:
    ink = _outline_of(hair)
    x0 = g.fx
    if params.facial_hair == "beard":
        outline = _face_outline(g, grow=0.006)
        lower = outline[(outline[:, 1] > 0.0)]  # angles 0..pi run right -> chin -> left
        # the inner edge stays below the cheeks so blush and smile lines remain visible
        inner = np.array(
            [
                [-(g.rx - 0.03), 0.05],
                [-0.112 + x0, 0.15],
                [-0.09 + x0, 0.245],
                [x0, 0.265],
                [0.09 + x0, 0.245],
                [0.112 + x0, 0.15],
                [g.rx - 0.03, 0.05],
            ]
        )
        pts = np.concatenate([[[g.rx + 0.006, 0.0]], lower, [[-(g.rx + 0.006), 0.0]], inner])
        c.poly(pts, hair, ink)
        for x in (-0.12, -0.06, 0.06, 0.12):
            c.line(np.array([[x + x0, 0.27], [x * 1.1 + x0, 0.3]]), ink, 0.006)
    if params.facial_hair in ("beard", "moustache"):
        right = _curve(
            [
                (x0, _MOUTH_Y - 0.05),
                (0.05 + x0, _MOUTH_Y - 0.068),
                (0.09 + x0, _MOUTH_Y - 0.035),
                (0.095 + x0, _MOUTH_Y + 0.0),
            ],
            10,
        )
        back = _curve([(0.095 + x0, _MOUTH_Y + 0.0), (0.06 + x0, _MOUTH_Y - 0.03), (x0, _MOUTH_Y - 0.02)], 8)
        half = np.concatenate([right, back])
        c.poly(np.concatenate([half, _mirror(half - [x0, 0])[::-1] + [x0, 0]]), hair, ink)


def _draw_mouth(c: _Canvas, params: FaceParams, g: _Geometry, skin: tuple[int, int, int]) -> None:
    lip = _LIPSTICK if params.lipstick == "lipstick" else _mix(_shade(skin, 0.78), (176, 64, 74), 0.4)
    lip_ink = _shade(lip, 0.55)
    x, y, w = g.fx * 0.9, _MOUTH_Y, 0.066
    shape = params.mouth
    if shape == "smiling":
        upper = _curve([(x - w, y - 0.012), (x, y + 0.006), (x + w, y - 0.012)], 14)
        lower = _curve(
            [(x + w, y - 0.012), (x + w * 0.7, y + 0.075), (x - w * 0.7, y + 0.075), (x - w, y - 0.012)], 18
        )
        mouth = np.concatenate([upper, lower])
        c.poly(mouth, _MOUTH_INSIDE)
        teeth = np.concatenate([upper, _curve([(x + w * 0.9, y), (x, y + 0.035), (x - w * 0.9, y)], 12)])
        c.poly(teeth, _TEETH)
        c.poly(mouth, None, lip, 0.019)
        c.line(np.array([[x - w - 0.006, y - 0.02], [x - w + 0.004, y - 0.008]]), lip_ink, 0.008)
        c.line(np.array([[x + w + 0.006, y - 0.02], [x + w - 0.004, y - 0.008]]), lip_ink, 0.008)
    elif shape == "surprised":
        c.ellipse(x, y + 0.012, 0.036, 0.046, _MOUTH_INSIDE, lip, 0.019)
    else:
        bend = 0.0 if shape == "neutral" else 0.032  # frowning: corners pulled down
        xs = np.linspace(-w * 0.92, w * 0.92, 17)
        base = y + bend * (xs / w) ** 2 - bend * 0.4
        up = base - 0.017 * (1 - (xs / w) ** 2) - 0.006 * np.exp(-((xs / 0.02) ** 2))
        down = base + 0.026 * (1 - (xs / w) ** 2)
        lips = np.concatenate([np.stack([xs + x, up], 1), np.stack([xs[::-1] + x, down[::-1]], 1)])
        c.poly(lips, lip, lip_ink, 0.007)
        c.line(np.stack([xs + x, base + 0.001], 1), lip_ink, 0.008)


def _draw_glasses(c: _Canvas, params: FaceParams, g: _Geometry) -> None:
    kind = params.glasses
    if kind == "none":
        return
    y = g.eye_y
    lens_rx = 0.083 if kind != "round" else 0.078
    for sx in (-1, 1):
        x = sx * g.eye_dx + g.fx
        if kind == "round":
            c.ellipse(x, y, 0.078, 0.078, (220, 240, 255, 50), _INK, 0.02)
        elif kind == "square":
            pts = np.array(
                [
                    [x - 0.083, y - 0.062],
                    [x + 0.083, y - 0.062],
                    [x + 0.083, y + 0.062],
                    [x - 0.083, y + 0.062],
                ]
            )
            c.poly(pts, (220, 240, 255, 50), _INK, 0.02)
        else:
            top = np.array([[x - sx * 0.08, y - 0.058], [x + sx * 0.088, y - 0.062]])
            bottom = _curve(
                [
                    (x + sx * 0.088, y - 0.062),
                    (x + sx * 0.085, y + 0.07),
                    (x - sx * 0.06, y + 0.075),
                    (x - sx * 0.08, y - 0.058),
                ],
                14,
            )
            pts = np.concatenate([top, bottom])
            c.poly(pts, (24, 24, 30), _INK, 0.014)
            c.line(np.array([[x - 0.03, y - 0.03], [x - 0.005, y - 0.045]]), (255, 255, 255, 150), 0.012)
        # temple arm towards the ear
        c.line(np.array([[x + sx * lens_rx, y - 0.02], [sx * (g.rx + 0.004), y - 0.012]]), _INK, 0.016)
    bridge_x = g.eye_dx - lens_rx
    c.line(
        _curve([(-bridge_x + g.fx, y - 0.01), (g.fx, y - 0.03), (bridge_x + g.fx, y - 0.01)], 8), _INK, 0.016
    )


def _draw_hat(c: _Canvas, params: FaceParams, g: _Geometry) -> None:
    if params.hat == "cap":
        dome = _ellipse_pts(0.0, _HAT_Y, g.rx + 0.035, 0.165, math.pi, 2 * math.pi, 28)
        c.poly(dome, _CAP, _outline_of(_CAP))
        for x in (-0.35, 0.35):
            c.line(
                _curve([(0.0, _HAT_Y - 0.165), (x * g.rx, _HAT_Y - 0.11), (x * g.rx * 1.3, _HAT_Y)], 10),
                _outline_of(_CAP),
                0.007,
            )
        c.circle(0.0, _HAT_Y - 0.163, 0.014, _CAP_BRIM, _outline_of(_CAP))
        brim = _ellipse_pts(g.fx * 0.5, _HAT_Y - 0.004, g.rx * 0.98, 0.034, 0.0, math.pi, 24)
        c.poly(
            np.concatenate([brim, [[g.rx * 0.98 + g.fx * 0.5, _HAT_Y - 0.012]]]), _CAP_BRIM, _outline_of(_CAP)
        )
    elif params.hat == "beanie":
        dome = _ellipse_pts(0.0, _HAT_Y - 0.05, g.rx + 0.04, 0.15, math.pi, 2 * math.pi, 28)
        c.poly(
            np.concatenate([dome, [[g.rx + 0.04, _HAT_Y - 0.04], [-(g.rx + 0.04), _HAT_Y - 0.04]]]),
            _BEANIE,
            _outline_of(_BEANIE),
        )
        cuff = np.concatenate(
            [
                _curve(
                    [
                        (-(g.rx + 0.048), _HAT_Y - 0.062),
                        (0.0, _HAT_Y - 0.082),
                        (g.rx + 0.048, _HAT_Y - 0.062),
                    ],
                    12,
                ),
                _curve(
                    [
                        (g.rx + 0.045, _HAT_Y + 0.002),
                        (0.0, _HAT_Y - 0.014),
                        (-(g.rx + 0.045), _HAT_Y + 0.002),
                    ],
                    12,
                ),
            ]
        )
        c.poly(cuff, _BEANIE_CUFF, _outline_of(_BEANIE))
        for x in np.linspace(-(g.rx + 0.01), g.rx + 0.01, 9):
            c.line(np.array([[x, _HAT_Y - 0.068], [x, _HAT_Y - 0.01]]), _outline_of(_BEANIE_CUFF), 0.006)
        c.line(
            _curve([(-0.06, _HAT_Y - 0.17), (-0.11, _HAT_Y - 0.15), (-0.16, _HAT_Y - 0.1)], 8),
            (255, 255, 255, 70),
            0.014,
        )


def _draw_earrings(c: _Canvas, g: _Geometry) -> None:
    for sx in (-1, 1):
        x, y = sx * (g.rx + 0.004), 0.07
        c.circle(x, y, 0.012, _GOLD, _INK, 0.005)
        c.circle(x, y + 0.047, 0.036, None, _INK, 0.024)
        c.circle(x, y + 0.047, 0.033, None, _GOLD, 0.015)


@lru_cache(maxsize=8)
def _light_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return t[None, :], t[:, None]


def render(params: FaceParams, size: int = 128) -> np.ndarray:
    """Renders one face.

    Args:
        params: the face.
        size: output side in pixels (any size >= 16; drawn at 4x and box-filtered down).

    Returns:
        image, uint8 [size, size, 3].
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    g = _geometry(params)
    skin, hair = _SKIN[params.skin_tone], _HAIR[params.hair_color]
    c = _Canvas(size, params, _BACKGROUND[params.background])
    _draw_shirt(c, params)
    _draw_back_hair(c, params, g, hair)
    _draw_neck_and_ears(c, g, skin)
    _draw_face(c, g, skin)
    if params.blush == "blush":
        _draw_blush(c, g)
    if params.age == "old":
        _draw_wrinkles(c, g, skin)
    _draw_nose(c, params, g, skin)
    _draw_eyes(c, params, g, skin)
    _draw_brows(c, g, hair, params.mouth)
    _draw_front_hair(c, params, g, hair)
    _draw_facial_hair(c, params, g, hair)
    _draw_mouth(c, params, g, skin)
    _draw_glasses(c, params, g)
    _draw_hat(c, params, g)
    if params.earrings == "earrings":
        _draw_earrings(c, g)
    image = np.asarray(c.finish(size), dtype=np.float32)
    gx, gy = _light_grid(size)
    light = params.brightness * (
        1.0 + params.light_strength * (math.cos(params.light_angle) * gx + math.sin(params.light_angle) * gy)
    )
    return np.clip(image * light[..., None] + 0.5, 0, 255).astype(np.uint8)


def render_batch(params_list: Sequence[FaceParams], size: int = 128) -> np.ndarray:
    """Renders several faces: uint8 [N, size, size, 3]."""
    out = np.empty((len(params_list), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(params_list):
        out[i] = render(p, size)
    return out
