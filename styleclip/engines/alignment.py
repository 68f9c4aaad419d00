"""Real photos → FFHQ-aligned faces: safe image loading, dlib face + landmark detection, the FFHQ crop.

The FFHQ generator only reproduces faces cropped the way its training set was (NVlabs ffhq-dataset,
`recreate_aligned_images`): eyes and mouth at fixed places in an oriented square. `ffhq_quad` computes that square
from 68 dlib landmarks and `ffhq_crop` cuts it out with the recipe's shrink / crop / blurred-reflection padding /
quad transform. `align_face` wires detection to both.

Which face is used when several are found (`choose_face`): each detection with dlib score >= `min_score` gets
prominence = box side (px) × clip(score, 0, 1), and the largest prominence wins. Reasons: dlib's score is its
margin; at ≥ 1 a detection is as sure as it gets, so among sure faces the bigger (the subject, usually) wins, and
weak detections are discounted in proportion to their score. With one upsampling step the astronaut photo gives
the real face (score ≈ 1.16, side 90 px) and a false positive on the suit (≈ 0.12, 89 px): 90 vs 10.6.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "MAX_BYTES",
    "MAX_PIXELS",
    "AlignmentResult",
    "FaceDetection",
    "ImageInputError",
    "NoFaceError",
    "align_face",
    "center_crop",
    "choose_face",
    "detect_faces",
    "ffhq_crop",
    "ffhq_quad",
    "load_image",
]

MAX_BYTES = 20 * 1024 * 1024  # a phone photo is 2–10 MB; larger uploads are refused before decoding
MAX_PIXELS = 50_000_000  # ~50 MP: above this the decoded RGB array alone would take > 150 MB
DETECT_MAX_SIDE = 1024  # detection runs on a copy at most this big; dlib's cost grows with the pixel count
MIN_SCORE = 0.0  # dlib's own default threshold for `detector(img, upsample)`


class ImageInputError(ValueError):
    """The input is not a usable image (unreadable, corrupt, too large); the message says which."""


class NoFaceError(ValueError):
    """No face was found; the caller may offer `center_crop` instead."""


# ----------------------------------------------------------------------------------------- loading


def load_image(source: str | os.PathLike[str] | bytes | bytearray | memoryview,
               max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read any Pillow-readable picture as RGB, safely.

    EXIF orientation is applied (phone photos are stored sideways with a rotate tag). Transparent images are put
    on white (the colour under alpha = 0 is arbitrary); greyscale, palette, CMYK and 16-bit images become 8-bit
    RGB. Only the first frame of an animation is used.

    Args:
        source: a file path or the file's bytes.
        max_bytes: refuse larger files (checked before decoding).
        max_pixels: refuse images with more pixels (checked from the header, before decoding).

    Returns:
        image: uint8 [H, W, 3] RGB.

    Raises:
        ImageInputError: missing/too large/not an image/corrupt or truncated; the message says which.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = "the uploaded data"
    else:
        path = Path(source)
        label = f"{path}"
        if not path.is_file():
            raise ImageInputError(f"{label}: no such file.")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageInputError(f"{label} is {size / 2 ** 20:.1f} MB; the limit is {max_bytes / 2 ** 20:.0f} MB.")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise ImageInputError(f"{label} is {len(data) / 2 ** 20:.1f} MB; the limit is {max_bytes / 2 ** 20:.0f} MB.")
    if not data:
        raise ImageInputError(f"{label} is empty.")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageInputError(f"{label} is not an image Pillow can read (PNG, JPEG, WebP, ...).") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"{label} could not be opened as an image: {exc}") from None
    width, height = im.size
    if width * height > max_pixels:
        raise ImageInputError(f"{label} is {width}×{height} = {width * height / 1e6:.0f} megapixels; the limit is "
                              f"{max_pixels / 1e6:.0f} megapixels.")
    if width < 1 or height < 1:
        raise ImageInputError(f"{label} has no pixels ({width}×{height}).")
    try:
        im.seek(0)
        im.load()  # decodes now, so truncation and corruption surface here and not later
        im = ImageOps.exif_transpose(im)
        return _to_rgb(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"{label} is corrupt or truncated and could not be decoded: {exc}") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode → uint8 [H, W, 3]."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # convert("RGB") clips >255 to white; rescale to the image's own range instead.
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape} "
                         "(use load_image to read files).")
    return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class FaceDetection:
    """One dlib detection, in the input image's pixel coordinates.

    Attributes:
        box: (left, top, right, bottom), floats (scaled back when detection ran on a downscaled copy).
        score: dlib's detection score (its SVM margin; > 0 = face by dlib's default threshold).
        landmarks: [68, 2] float64 (x, y) of the 68-point scheme, or None when not computed.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None

    @property
    def side(self) -> float:
        """Mean side length of the box in px."""
        return 0.5 * ((self.box[2] - self.box[0]) + (self.box[3] - self.box[1]))

    @property
    def prominence(self) -> float:
        """side × clip(score, 0, 1): the ranking used by `choose_face` (see the module docstring)."""
        return self.side * min(max(self.score, 0.0), 1.0)


_MODELS: dict[str, object] = {}


def _dlib_models():
    """(detector, shape predictor), loaded once (the predictor file is ~100 MB)."""
    if not _MODELS:
        try:
            import dlib

            with warnings.catch_warnings():
                # face_recognition_models imports the deprecated pkg_resources; the warning is noise for users.
                warnings.simplefilter("ignore")
                import face_recognition_models
        except ImportError as exc:  # pragma: no cover - dependency problem, not a user mistake
            raise RuntimeError(f"face alignment needs dlib and face_recognition_models: {exc}") from None
        _MODELS["detector"] = dlib.get_frontal_face_detector()
        _MODELS["predictor"] = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    return _MODELS["detector"], _MODELS["predictor"]


def detect_faces(image: np.ndarray, upsample: int = 1, min_score: float = MIN_SCORE,
                 max_side: int = DETECT_MAX_SIDE) -> list[FaceDetection]:
    """All frontal faces with their 68 landmarks, in dlib's order.

    Large images are downscaled to at most `max_side` px for the detector (cost ∝ pixels; faces in big photos are
    big); the landmark predictor then runs on the full-resolution image inside the box scaled back, so the
    landmarks keep full precision.

    Args:
        image: uint8 [H, W, 3] RGB.
        upsample: the detector's upsampling steps (1 as in the FFHQ scripts; finds faces down to ~40 px).
        min_score: drop detections scoring below this (0 = dlib's default).
        max_side: longest side the detector sees.

    Returns:
        list of `FaceDetection` with landmarks [68, 2] in `image` coordinates.
    """
    import dlib

    image = _check_image(image)
    detector, predictor = _dlib_models()
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    small = image
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
        scale_x, scale_y = width / size[0], height / size[1]
    else:
        scale_x = scale_y = 1.0
    rects, scores, _ = detector.run(small, upsample, min_score)
    faces = []
    for rect, score in zip(rects, scores, strict=True):
        box = (rect.left() * scale_x, rect.top() * scale_y, rect.right() * scale_x, rect.bottom() * scale_y)
        full = dlib.rectangle(*(round(v) for v in box))
        shape = predictor(image, full)
        landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)  # [68, 2]
        faces.append(FaceDetection(box, float(score), landmarks))
    return faces


def choose_face(faces: list[FaceDetection]) -> int:
    """Index of the most prominent face: max side × clip(score, 0, 1); ties go to the earlier detection."""
    if not faces:
        raise NoFaceError("no faces to choose from.")
    return max(range(len(faces)), key=lambda i: (faces[i].prominence, -i))


# ----------------------------------------------------------------------------------------- the FFHQ recipe


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ oriented crop square from 68 landmarks (recipe steps 1–2).

    Args:
        landmarks: [68, 2] (x, y) in the 68-point scheme (0-based; eyes 36–47, mouth corners 48 and 54).

    Returns:
        quad: [4, 2] float64 corners c−x−y, c−x+y, c+x+y, c+x−y (top-left, bottom-left, bottom-right,
        top-right of the face when upright); the side is 2·|x|.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected landmarks [68, 2], got {lm.shape}")
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = 0.5 * (eye_left + eye_right)
    eye_to_eye = eye_right - eye_left
    mouth_avg = 0.5 * (lm[48] + lm[54])
    eye_to_mouth = mouth_avg - eye_avg

    # x: the face's horizontal axis, taking both the eye line and the eye→mouth line (rotated −90°) into account.
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = np.hypot(*x)
    if not norm > 0:
        raise ValueError("degenerate landmarks: the eyes and mouth do not define a face orientation.")
    x = x / norm * max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth))
    y = np.array([-x[1], x[0]])  # x rotated by 90°
    c = eye_avg + 0.1 * eye_to_mouth
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_crop(image: np.ndarray, quad: np.ndarray, size: int = 1024, transform_size: int | None = None,
              enable_padding: bool = True) -> np.ndarray:
    """Cut the quad out of the image as FFHQ did (recipe steps 3–6).

    Args:
        image: uint8 [H, W, 3] RGB.
        quad: [4, 2] from `ffhq_quad`, in `image` coordinates.
        size: output side in px (1024 for the FFHQ generator).
        transform_size: side of the intermediate quad transform; default max(4096, size) as in the original
            (2·size is much faster and changes the result only slightly).
        enable_padding: pad with blurred reflection where the quad leaves the image (the original's default).

    Returns:
        uint8 [size, size, 3].
    """
    image = _check_image(image)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    transform_size = max(4096, size) if transform_size is None else int(transform_size)
    quad = np.array(quad, dtype=np.float64)
    qsize = float(np.hypot(*(quad[3] - quad[0])))  # |(c + x − y) − (c − x − y)| = 2·|x|, the recipe's qsize
    img = Image.fromarray(image)

    # 3. Shrink: resample big photos down first so the final resize is not a huge antialiasing step.
    shrink = math.floor(qsize / size * 0.5)
    if shrink > 1:
        new_size = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(new_size, Image.LANCZOS)
        quad /= shrink
        qsize /= shrink

    # 4. Crop to the quad's bounding box plus a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
            int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    # 5. Pad: where the quad leaves the photo, reflect it and blend toward a blur and the median colour, so the
    # generator does not see hard mirrored edges.
    pad = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
           int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
           max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, max(int(np.rint(qsize * 0.3)), 1))
        img = _pad_blend(np.asarray(img, dtype=np.float32), pad, qsize)
        quad += pad[:2]

    # 6. Bilinear quad transform (PIL's QUAD takes the source corners top-left, bottom-left, bottom-right,
    # top-right, which is the quad's order), then an antialiased resize.
    img = img.transform((transform_size, transform_size), Image.QUAD, tuple((quad + 0.5).flatten()),
                        Image.BILINEAR)
    if transform_size != size:
        img = img.resize((size, size), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def _pad_blend(arr: np.ndarray, pad: np.ndarray, qsize: float) -> Image.Image:
    """Recipe step 5: arr float32 [h, w, 3], pad (left, top, right, bottom) → padded, blended PIL image."""
    from scipy.ndimage import gaussian_filter

    left, top, right, bottom = (int(p) for p in pad)
    arr = np.pad(arr, ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w, _ = arr.shape
    y, x, _ = np.ogrid[:h, :w, :1]
    # mask: 0 inside the original photo, rising to 1 at the outer edge of the padding.
    mask = np.maximum(1.0 - np.minimum(np.float32(x) / left, np.float32(w - 1 - x) / right),
                      1.0 - np.minimum(np.float32(y) / top, np.float32(h - 1 - y) / bottom))
    blur = qsize * 0.02
    arr += (gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")


# ----------------------------------------------------------------------------------------- public entry points


@dataclass(frozen=True)
class AlignmentResult:
    """What `align_face` returns.

    Attributes:
        image: uint8 [size, size, 3], the FFHQ-aligned face.
        quad: [4, 2] float64 crop square in the input image's coordinates (see `ffhq_quad`).
        landmarks: [68, 2] float64 landmarks of the chosen face in the input image's coordinates.
        faces_found: how many faces the detector returned (above its threshold).
        chosen_index: index of the used face among them (dlib's order).
        note: a plain sentence for the UI, e.g. "2 faces found; used the most prominent (#1)".
    """

    image: np.ndarray
    quad: np.ndarray
    landmarks: np.ndarray
    faces_found: int
    chosen_index: int
    note: str


def align_face(image: np.ndarray, size: int = 1024, *, upsample: int = 1, transform_size: int | None = None,
               min_score: float = MIN_SCORE) -> AlignmentResult:
    """Detect the most prominent face and crop it as FFHQ.

    Args:
        image: uint8 [H, W, 3] RGB (e.g. from `load_image`).
        size: output side (1024 for FFHQ; the inversion resizes to the generator's size anyway).
        upsample: detector upsampling steps (1 as in the FFHQ scripts).
        transform_size: see `ffhq_crop`.
        min_score: detector threshold (0 = dlib's default).

    Returns:
        AlignmentResult.

    Raises:
        NoFaceError: no face was found (the message suggests the centre crop).
        ValueError: not a uint8 RGB image.
    """
    image = _check_image(image)
    faces = detect_faces(image, upsample=upsample, min_score=min_score)
    if not faces:
        raise NoFaceError("No face was found in this picture. Try a clearer, frontal photo of one face, or use "
                          "the centre crop instead (the result will not be aligned like the training faces).")
    index = choose_face(faces)
    chosen = faces[index]
    quad = ffhq_quad(chosen.landmarks)
    aligned = ffhq_crop(image, quad, size=size, transform_size=transform_size)
    if len(faces) == 1:
        note = "1 face found."
    else:
        note = (f"{len(faces)} faces found; used the most prominent (#{index + 1}, score {chosen.score:.2f}, "
                f"{chosen.side:.0f} px).")
    return AlignmentResult(aligned, quad, chosen.landmarks, len(faces), index, note)


def center_crop(image: np.ndarray, size: int = 1024) -> np.ndarray:
    """The largest centred square, resized to size × size: the fallback when no face is found.

    Args:
        image: uint8 [H, W, 3].

    Returns:
        uint8 [size, size, 3].
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(image[top:top + side, left:left + side])
    if side != size:
        square = square.resize((size, size), Image.LANCZOS)
    return np.asarray(square, dtype=np.uint8)
