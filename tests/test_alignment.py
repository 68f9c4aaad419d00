"""Tests for styleclip/engines/alignment.py: safe loading, face choice, the FFHQ quad and crop."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dlib")
pytest.importorskip("face_recognition_models")
skdata = pytest.importorskip("skimage.data")

from styleclip.cli import main
from styleclip.engines.alignment import (
    FaceDetection,
    ImageInputError,
    NoFaceError,
    align_face,
    center_crop,
    choose_face,
    detect_faces,
    ffhq_crop,
    ffhq_quad,
    load_image,
)

# The astronaut's real face (dlib box at one upsampling step) and the weak false positive on her suit.
REAL_FACE = (175, 76, 265, 166)
FALSE_POSITIVE = (126, 335, 215, 425)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()  # uint8 [512, 512, 3]


def _png_bytes(image: np.ndarray | Image.Image) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def _inside(points: np.ndarray, box: tuple[float, float, float, float], margin: float = 0.0) -> bool:
    return bool(np.all((points[:, 0] >= box[0] - margin) & (points[:, 0] <= box[2] + margin)
                       & (points[:, 1] >= box[1] - margin) & (points[:, 1] <= box[3] + margin)))


def _landmarks(eye_left, eye_right, mouth_left, mouth_right) -> np.ndarray:
    """[68, 2] with every eye point at its eye centre and the mouth corners set (the rest far away, unused)."""
    lm = np.full((68, 2), 1e6)
    lm[36:42] = eye_left
    lm[42:48] = eye_right
    lm[48] = mouth_left
    lm[54] = mouth_right
    return lm


def _to_aligned(points: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Where input-image points land in the aligned image: coordinates along the quad's edges, scaled to size."""
    origin, right, down = quad[0], quad[3] - quad[0], quad[1] - quad[0]
    rel = points - origin
    u = rel @ right / (right @ right)
    v = rel @ down / (down @ down)
    return np.stack([u, v], axis=1) * size


# ----------------------------------------------------------------------------------------- ffhq_quad


def test_ffhq_quad_matches_hand_computation():
    # eye_avg (50, 50), eye_to_eye (20, 0), mouth_avg (50, 80), eye_to_mouth (0, 30).
    # x = (20, 0) − (−30, 0) = (50, 0) → unit (1, 0) × max(2·20, 1.8·30 = 54) = (54, 0); y = (0, 54);
    # c = (50, 50) + 0.1·(0, 30) = (50, 53).
    quad = ffhq_quad(_landmarks((40, 50), (60, 50), (42, 80), (58, 80)))
    expected = np.array([[-4, -1], [-4, 107], [104, 107], [104, -1]], dtype=np.float64)
    np.testing.assert_allclose(quad, expected, atol=1e-9)


def test_ffhq_quad_eye_distance_dominates_and_tilt():
    # Wide-set eyes: 2·|eye_to_eye| = 80 > 1.8·|eye_to_mouth| = 36; the eye line tilted by the mouth term.
    # eye_avg (100, 100), eye_to_eye (40, 0), mouth_avg (100, 120), eye_to_mouth (0, 20).
    # x = (40, 0) − (−20, 0) = (60, 0) → (80, 0); y = (0, 80); c = (100, 102).
    quad = ffhq_quad(_landmarks((80, 100), (120, 100), (90, 120), (110, 120)))
    np.testing.assert_allclose(quad, [[20, 22], [20, 182], [180, 182], [180, 22]], atol=1e-9)


def test_ffhq_quad_rotates_with_the_face():
    lm = _landmarks((40, 50), (60, 50), (42, 80), (58, 80))
    angle = np.deg2rad(30)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([50.0, 60.0])
    rotated = (lm[36:55] - centre) @ rot.T + centre
    lm_rot = lm.copy()
    lm_rot[36:55] = rotated
    expected = (ffhq_quad(lm) - centre) @ rot.T + centre
    np.testing.assert_allclose(ffhq_quad(lm_rot), expected, atol=1e-9)


def test_ffhq_quad_rejects_bad_shapes():
    with pytest.raises(ValueError, match="68, 2"):
        ffhq_quad(np.zeros((5, 2)))


# ----------------------------------------------------------------------------------------- ffhq_crop


def test_ffhq_crop_axis_aligned_quad_is_a_plain_crop():
    # A linear ramp: bilinear sampling of it is exact, so the output must be the crop up to a constant
    # sub-pixel offset.
    yy, xx = np.mgrid[:200, :200]
    ramp = np.stack([xx, yy, (xx + yy) // 2], axis=2).astype(np.uint8)
    quad = np.array([[60, 70], [60, 134], [124, 134], [124, 70]], dtype=np.float64)
    out = ffhq_crop(ramp, quad, size=64, transform_size=64).astype(int)
    diff = out - ramp[70:134, 60:124].astype(int)
    assert out.shape == (64, 64, 3)
    assert diff.max() - diff.min() <= 1


def test_ffhq_crop_pads_faces_at_the_border(astronaut):
    full = align_face(astronaut, size=128, transform_size=256)
    # Cut the photo just above the eyebrows: the quad now sticks out of the top, so the recipe pads.
    cut = astronaut[70:, 120:]
    padded = align_face(cut, size=128, transform_size=256)
    assert padded.image.shape == (128, 128, 3)
    np.testing.assert_allclose(padded.quad + [120, 70], full.quad, atol=3.0)
    # The face itself (lower centre of the crop) is the same picture; the padded top differs.
    face = (slice(60, 120), slice(30, 98))
    assert np.abs(padded.image[face].astype(int) - full.image[face].astype(int)).mean() < 8


# ----------------------------------------------------------------------------------------- detection + choice


def test_astronaut_aligns_on_the_real_face(astronaut):
    result = align_face(astronaut, size=128, transform_size=256)
    assert result.image.shape == (128, 128, 3) and result.image.dtype == np.uint8
    assert result.faces_found >= 2  # the real face and the false positive on the suit
    assert _inside(result.landmarks[36:48], REAL_FACE)  # the eyes
    assert _inside(result.landmarks[48:68], REAL_FACE, margin=5)  # the mouth
    centre = result.quad.mean(axis=0)
    assert abs(centre[0] - 220) < 15 and abs(centre[1] - 106) < 15
    # FFHQ's layout: eyes level at the upper middle, mouth centred below them.
    mapped = _to_aligned(result.landmarks, result.quad, 128)
    eye_left, eye_right = mapped[36:42].mean(0), mapped[42:48].mean(0)
    assert abs(eye_left[1] - eye_right[1]) < 2
    assert 40 < eye_left[1] < 64 and abs((eye_left[0] + eye_right[0]) / 2 - 64) < 3
    assert 70 < mapped[48:68, 1].mean() < 100


def test_aligned_face_redetects_where_the_crop_puts_it(astronaut):
    result = align_face(astronaut, size=256, transform_size=512)
    faces = detect_faces(result.image)
    assert len(faces) >= 1
    again = faces[choose_face(faces)]
    expected = _to_aligned(result.landmarks, result.quad, 256)
    for group in (slice(36, 42), slice(42, 48), slice(48, 60)):
        assert np.linalg.norm(again.landmarks[group].mean(0) - expected[group].mean(0)) < 6


def test_weak_false_positive_is_not_chosen(astronaut):
    faces = detect_faces(astronaut, upsample=1)
    boxes = [tuple(round(v) for v in f.box) for f in faces]
    assert FALSE_POSITIVE in boxes, boxes  # dlib does report it at one upsampling step
    weak = boxes.index(FALSE_POSITIVE)
    assert faces[weak].score < 0.5
    chosen = faces[choose_face(faces)]
    assert chosen.score > 1.0 and _inside(np.array([chosen.box[:2], chosen.box[2:]]), REAL_FACE, margin=3)


def test_choose_face_rule():
    big_weak = FaceDetection((0, 0, 200, 200), 0.05)  # prominence 10
    small_sure = FaceDetection((0, 0, 80, 80), 1.3)  # 80
    bigger_sure = FaceDetection((0, 0, 120, 120), 1.0)  # 120
    assert choose_face([big_weak, small_sure]) == 1
    assert choose_face([small_sure, bigger_sure, big_weak]) == 1
    with pytest.raises(NoFaceError):
        choose_face([])


def test_two_real_faces_picks_the_larger(astronaut):
    face = Image.fromarray(astronaut[30:230, 120:320])  # 200 × 200 around the face
    canvas = Image.new("RGB", (560, 300), (128, 128, 128))
    canvas.paste(face.resize((110, 110), Image.LANCZOS), (30, 95))  # small one first, on the left
    canvas.paste(face.resize((220, 220), Image.LANCZOS), (300, 40))
    image = np.asarray(canvas)
    faces = detect_faces(image)
    assert len(faces) >= 2
    result = align_face(image, size=64, transform_size=128)
    chosen_centre = result.landmarks[36:48].mean(0)
    assert chosen_centre[0] > 300, (chosen_centre, [(f.box, f.score) for f in faces])
    assert "faces found" in result.note


def test_cat_has_no_face_and_centre_crop_is_offered():
    cat = skdata.chelsea()
    with pytest.raises(NoFaceError, match="centre crop") as info:
        align_face(cat, size=64)
    assert isinstance(info.value, ValueError)
    square = center_crop(cat, 64)
    assert square.shape == (64, 64, 3) and square.dtype == np.uint8


def test_large_images_are_downscaled_for_detection(astronaut):
    big = np.asarray(Image.fromarray(astronaut).resize((1536, 1536), Image.LANCZOS))
    faces = detect_faces(big, upsample=0, max_side=512)  # detector sees the 512 copy
    chosen = faces[choose_face(faces)]
    # Landmarks come back in the big image's coordinates, on the (3× scaled) real face.
    assert _inside(chosen.landmarks[36:48], tuple(3 * v for v in REAL_FACE), margin=6)


# ----------------------------------------------------------------------------------------- loading


def test_load_image_from_bytes_and_path(tmp_path, astronaut):
    data = _png_bytes(astronaut)
    np.testing.assert_array_equal(load_image(data), astronaut)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_image(path), astronaut)


def test_load_image_rejects_non_images_and_corrupt_files(tmp_path, astronaut):
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(b"this is plain text, not a picture")
    data = _png_bytes(astronaut)
    with pytest.raises(ImageInputError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageInputError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_load_image_size_limits(tmp_path):
    small = _png_bytes(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ImageInputError, match="limit is"):
        load_image(small, max_bytes=100)
    path = tmp_path / "s.png"
    path.write_bytes(small)
    with pytest.raises(ImageInputError, match="MB"):
        load_image(path, max_bytes=100)
    # 56 MP in a few kB: refused from the header, before anything is decoded.
    huge = _png_bytes(Image.new("1", (8000, 7000)))
    assert len(huge) < 1_000_000
    with pytest.raises(ImageInputError, match="megapixels"):
        load_image(huge)


def test_load_image_modes_and_exif_orientation():
    im = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = im.getexif()
    exif[0x0112] = 6  # stored sideways: "rotate 90° clockwise to display"
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    assert load_image(buf.getvalue()).shape == (40, 20, 3)

    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert (load_image(_png_bytes(rgba)) == 255).all()  # transparent → white, not black
    grey = load_image(_png_bytes(Image.new("L", (8, 6), 90)))
    assert grey.shape == (6, 8, 3) and (grey == 90).all()
    deep = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    deep_rgb = load_image(_png_bytes(Image.fromarray(deep)))
    assert deep_rgb.shape == (8, 8, 3) and deep_rgb.min() == 0 and deep_rgb.max() == 255


def test_align_rejects_non_uint8_rgb():
    with pytest.raises(ValueError, match="uint8"):
        align_face(np.zeros((32, 32), np.uint8))


# ----------------------------------------------------------------------------------------- CLI


def test_cli_align_astronaut_and_cat(tmp_path, capsys, astronaut):
    src = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(src)
    out = tmp_path / "aligned.png"
    assert main(["align", "--image", str(src), "--out", str(out), "--size", "64"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["mode"] == "ffhq" and info["faces_found"] >= 2 and info["chosen_index"] == 0
    assert Image.open(out).size == (64, 64)

    cat = tmp_path / "cat.png"
    Image.fromarray(skdata.chelsea()).save(cat)
    assert main(["align", "--image", str(cat), "--out", str(out), "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert "no face" in err and "--center-crop-if-no-face" in err and "Traceback" not in err
    assert main(["align", "--image", str(cat), "--out", str(out), "--size", "64", "--center-crop-if-no-face"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["mode"] == "center_crop"

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    assert main(["align", "--image", str(junk), "--out", str(out)]) == 2
    assert "not an image" in capsys.readouterr().err
