"""Synthetic drawn faces with the seven expressions: the demo dataset, made from code.

The faces are front-facing cartoons drawn with OpenCV: a skin-toned face ellipse,
hair, ears, neck, eyes with irises and pupils, brows, a shaded nose and a mouth.
The expression class is carried by four cues, each drawn from a class-specific
distribution whose ranges overlap between classes:

- brow height and brow slant (inner ends lowered for angry, raised for sad and fear),
- eye opening (narrow for disgust, wide for fear and surprise),
- mouth-corner curvature (up for happy, down for sad and disgust),
- mouth opening and width (an O for surprise, a stretched gap for fear).

Every image also varies in position, scale, rotation, skin tone, hair, background,
lighting, noise and blur, so that telling the classes apart is a real but
learnable task. The layout matches the mean shape of dlib's 68-point landmark
predictor when the whole image is the face box, like an aligned face crop.

Output: `ROOT/{train,val}/<class>/<class>_NNNN.png` (the folder format of
`slfer --format folder`) and `ROOT/demo_faces.json`, written last, which stores
the settings and, per image, the bounding boxes of the drawn features in pixels.
Each image depends only on (seed, split, class, index), so a rerun with the same
arguments writes byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.labels import CLASS_NAMES

logger = logging.getLogger(__name__)

SIDECAR_NAME = "demo_faces.json"
SPLITS = ("train", "val")

# Drawing is done at this many times the output size and then downsampled with
# area interpolation, which anti-aliases the edges.
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Expression:
    """Expression cues: the mean values of one class in EXPRESSIONS, or the values drawn for one face.

    Lengths are fractions of the face box side. Positive `brow_raise` moves
    both brows up, positive `brow_slant` raises their inner ends, positive
    `mouth_curve` raises the mouth corners (a smile).
    """

    brow_raise: float
    brow_slant: float
    eye_open: float
    mouth_curve: float
    mouth_open: float
    mouth_width: float
    upper_lip_raise: float = 0.0
    nose_wrinkle: bool = False


EXPRESSIONS: dict[str, Expression] = {
    "angry": Expression(brow_raise=-0.018, brow_slant=-0.032, eye_open=0.80, mouth_curve=-0.010,
                        mouth_open=0.000, mouth_width=0.90),
    "disgust": Expression(brow_raise=-0.012, brow_slant=-0.012, eye_open=0.60, mouth_curve=-0.025,
                          mouth_open=0.012, mouth_width=0.95, upper_lip_raise=0.020, nose_wrinkle=True),
    "fear": Expression(brow_raise=0.030, brow_slant=0.030, eye_open=1.40, mouth_curve=-0.015,
                       mouth_open=0.040, mouth_width=1.10),
    "happy": Expression(brow_raise=0.008, brow_slant=0.000, eye_open=0.80, mouth_curve=0.045,
                        mouth_open=0.020, mouth_width=1.15),
    "sad": Expression(brow_raise=0.000, brow_slant=0.035, eye_open=0.75, mouth_curve=-0.035,
                      mouth_open=0.000, mouth_width=0.90),
    "surprise": Expression(brow_raise=0.050, brow_slant=0.005, eye_open=1.50, mouth_curve=0.000,
                           mouth_open=0.085, mouth_width=0.70),
    "neutral": Expression(brow_raise=0.000, brow_slant=0.000, eye_open=1.00, mouth_curve=0.000,
                          mouth_open=0.000, mouth_width=1.00),
}

# Standard deviation of each cue around its class mean. They are of the order
# of the gaps between class means, so single cues overlap and a classifier has
# to combine them. Even with the exact cue values, a quadratic discriminant
# fitted on 500 faces per class classifies 89% of held-out faces correctly.
CUE_SPREAD = {
    "brow_raise": 0.012,
    "brow_slant": 0.014,
    "eye_open": 0.18,
    "mouth_curve": 0.014,
    "mouth_open": 0.014,
    "mouth_width": 0.08,
    "upper_lip_raise": 0.008,
}

SKIN_LIGHT = np.array([250, 222, 196], dtype=np.float64)
SKIN_DARK = np.array([105, 68, 48], dtype=np.float64)
HAIR_COLOURS = np.array([
    [25, 20, 18], [60, 40, 25], [110, 75, 40], [200, 165, 100], [150, 65, 30], [150, 150, 150],
], dtype=np.float64)
IRIS_COLOURS = np.array([[70, 45, 25], [40, 90, 140], [60, 110, 70], [100, 100, 110]], dtype=np.float64)


@dataclass(frozen=True)
class FaceSample:
    """Everything that decides one drawn face: expression cues and nuisance variables."""

    cues: Expression
    gaze: tuple[float, float]
    scale: float
    angle_deg: float
    shift: tuple[float, float]
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_length: float
    iris: tuple[float, float, float]
    background: tuple[float, float, float]
    background_gradient: tuple[float, float, float]
    show_ears: bool
    show_neck: bool
    teeth: bool
    light_gradient: tuple[float, float]
    brightness: float
    contrast: float
    noise_sigma: float
    blur_sigma: float


def sample_face(rng: np.random.Generator, class_name: str) -> FaceSample:
    """Draw the cues of `class_name` and the nuisance variables of one face."""
    expression = EXPRESSIONS[class_name]
    cue = {name: getattr(expression, name) + rng.normal(0.0, spread) for name, spread in CUE_SPREAD.items()}
    skin = SKIN_LIGHT + (SKIN_DARK - SKIN_LIGHT) * rng.uniform(0.0, 1.0)
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.8, 1.15)
    iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
    background = rng.uniform(40, 230, size=3)
    cues = Expression(
        brow_raise=cue["brow_raise"],
        brow_slant=cue["brow_slant"],
        eye_open=float(np.clip(cue["eye_open"], 0.35, 2.0)),
        mouth_curve=cue["mouth_curve"],
        mouth_open=float(max(cue["mouth_open"], 0.0)),
        mouth_width=float(np.clip(cue["mouth_width"], 0.55, 1.35)),
        upper_lip_raise=float(max(cue["upper_lip_raise"], 0.0)),
        nose_wrinkle=expression.nose_wrinkle and rng.uniform() < 0.8,
    )
    return FaceSample(
        cues=cues,
        gaze=(rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2)),
        scale=rng.uniform(0.86, 1.0),
        angle_deg=rng.uniform(-8.0, 8.0),
        shift=(rng.uniform(-0.04, 0.04), rng.uniform(-0.03, 0.03)),
        skin=tuple(skin),
        hair=tuple(np.clip(hair, 0, 255)),
        hair_length=rng.uniform(0.0, 1.0),
        iris=tuple(iris),
        background=tuple(background),
        background_gradient=tuple(rng.uniform(-40, 40, size=3)),
        show_ears=rng.uniform() < 0.7,
        show_neck=rng.uniform() < 0.8,
        teeth=rng.uniform() < 0.6,
        light_gradient=(rng.uniform(-0.25, 0.25), rng.uniform(-0.15, 0.15)),
        brightness=rng.uniform(0.85, 1.15),
        contrast=rng.uniform(0.8, 1.1),
        noise_sigma=rng.uniform(0.0, 6.0),
        blur_sigma=rng.uniform(0.0, 0.9),
    )


class FaceCanvas:
    """A supersampled RGB canvas that draws shapes given in face-box coordinates.

    Face-box coordinates put (0, 0) and (1, 1) at the corners of the nominal
    face box. The canvas maps them to pixels through the face's scale,
    rotation and shift, and records the pixel bounding box of each named
    feature in output-image pixels.
    """

    def __init__(self, size: int, face: FaceSample, fill: np.ndarray):
        self.size = size
        self.side = size * SUPERSAMPLE
        self.pixels = fill
        angle = math.radians(face.angle_deg)
        self.rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        self.scale = face.scale * self.side
        self.centre = np.array([0.5 + face.shift[0], 0.5 + face.shift[1]]) * self.side
        self.boxes: dict[str, list[float]] = {}

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Map Nx2 face-box points to canvas pixels."""
        centred = (np.asarray(points, dtype=np.float64) - 0.5) * self.scale
        return centred @ self.rotation.T + self.centre

    def record(self, name: str, points: np.ndarray, padding: float = 0.0) -> None:
        """Grow the output-pixel bounding box of feature `name` to cover `points` plus `padding` face-box units."""
        pixels = self.to_pixels(points) / SUPERSAMPLE
        pad = padding * self.scale / SUPERSAMPLE
        box = [float(pixels[:, 0].min()) - pad, float(pixels[:, 1].min()) - pad,
               float(pixels[:, 0].max()) + pad, float(pixels[:, 1].max()) + pad]
        if name in self.boxes:
            old = self.boxes[name]
            box = [min(old[0], box[0]), min(old[1], box[1]), max(old[2], box[2]), max(old[3], box[3])]
        self.boxes[name] = [round(value, 2) for value in box]

    def polygon(self, points: np.ndarray, colour, feature: str | None = None) -> None:
        """Fill a polygon given in face-box coordinates."""
        pixels = np.round(self.to_pixels(points)).astype(np.int32)
        cv2.fillPoly(self.pixels, [pixels], tuple(float(c) for c in colour), lineType=cv2.LINE_AA)
        if feature:
            self.record(feature, points)

    def polyline(self, points: np.ndarray, colour, width: float, feature: str | None = None) -> None:
        """Draw an open polyline; `width` is in face-box units."""
        pixels = np.round(self.to_pixels(points)).astype(np.int32)
        thickness = max(1, int(round(width * self.scale)))
        cv2.polylines(self.pixels, [pixels], False, tuple(float(c) for c in colour), thickness, cv2.LINE_AA)
        if feature:
            self.record(feature, points, padding=width / 2)


def ellipse_points(centre, axes, angle_deg: float = 0.0, start_deg: float = 0.0,
                   end_deg: float = 360.0, count: int = 48) -> np.ndarray:
    """Points on an ellipse arc in face-box coordinates."""
    t = np.radians(np.linspace(start_deg, end_deg, count))
    local = np.stack([axes[0] * np.cos(t), axes[1] * np.sin(t)], axis=1)
    angle = math.radians(angle_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return local @ rotation.T + np.asarray(centre, dtype=np.float64)


def shade(colour, factor: float, tint=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Scale a colour by `factor`, add `tint`, clip to 0..255."""
    return np.clip(np.asarray(colour, dtype=np.float64) * factor + np.asarray(tint), 0, 255)


def draw_head(canvas: FaceCanvas, face: FaceSample) -> None:
    """Draw neck, hair behind the head, ears and the face ellipse with its shading."""
    skin = np.asarray(face.skin)
    if face.show_neck:
        neck = np.array([[0.36, 0.80], [0.64, 0.80], [0.68, 1.40], [0.32, 1.40]])
        canvas.polygon(neck, shade(skin, 0.82), feature="neck")
    hair_bottom = 0.45 + 0.55 * face.hair_length
    back_hair = np.concatenate([ellipse_points((0.5, 0.44), (0.47, 0.52), start_deg=180, end_deg=360),
                                [[0.97, hair_bottom], [0.03, hair_bottom]]])
    canvas.polygon(back_hair, face.hair, feature="hair")
    if face.show_ears:
        for x in (0.075, 0.925):
            canvas.polygon(ellipse_points((x, 0.47), (0.055, 0.095)), shade(skin, 0.92), feature="ears")
            canvas.polygon(ellipse_points((x, 0.47), (0.025, 0.055)), shade(skin, 0.78))
    canvas.polygon(ellipse_points((0.5, 0.52), (0.42, 0.52), start_deg=0, end_deg=360, count=96),
                   shade(skin, 0.9), feature="face")
    canvas.polygon(ellipse_points((0.5, 0.50), (0.38, 0.48), count=96), skin)
    fringe = np.concatenate([ellipse_points((0.5, 0.44), (0.45, 0.50), start_deg=185, end_deg=355),
                             ellipse_points((0.5, 0.05), (0.40, 0.07), start_deg=0, end_deg=180)])
    canvas.polygon(fringe, face.hair, feature="hair")


def draw_brows(canvas: FaceCanvas, face: FaceSample) -> None:
    """Draw both brows; the slant moves their inner ends up or down."""
    colour = shade(face.hair, 0.7)
    base_y = 0.215 - face.cues.brow_raise
    for side, outer_x, inner_x in (("left", 0.16, 0.43), ("right", 0.84, 0.57)):
        t = np.linspace(0.0, 1.0, 9)
        x = outer_x + (inner_x - outer_x) * t
        arch = -0.03 * np.sin(np.pi * (0.15 + 0.7 * t))
        y = base_y + 0.02 + arch - face.cues.brow_slant * t
        canvas.polyline(np.stack([x, y], axis=1), colour, width=0.035, feature=f"brow_{side}")


def draw_eyes(canvas: FaceCanvas, face: FaceSample) -> None:
    """Draw socket shadow, sclera, iris, pupil and upper lid of each eye."""
    half_width = 0.07
    half_height = 0.032 * face.cues.eye_open
    socket = shade(face.skin, 0.6)
    for side, centre_x in (("left", 0.305), ("right", 0.695)):
        centre = (centre_x, 0.315)
        canvas.polygon(ellipse_points(centre, (half_width * 1.3, half_height + 0.04)), socket)
        sclera = ellipse_points(centre, (half_width, half_height))
        canvas.polygon(sclera, (245, 245, 240), feature=f"eye_{side}")
        iris_radius = 0.028
        iris_centre = (centre_x + face.gaze[0] * 0.03, 0.315 + face.gaze[1] * 0.01)
        iris = ellipse_points(iris_centre, (iris_radius, min(iris_radius, half_height * 1.05)))
        canvas.polygon(iris, face.iris)
        pupil = ellipse_points(iris_centre, (0.012, min(0.012, half_height)))
        canvas.polygon(pupil, (10, 10, 10))
        upper_lid = ellipse_points(centre, (half_width * 1.05, half_height * 1.1), start_deg=180, end_deg=360, count=20)
        canvas.polyline(upper_lid, (30, 22, 20), width=0.014, feature=f"eye_{side}")
        lower_lid = ellipse_points(centre, (half_width, half_height), start_deg=10, end_deg=170, count=16)
        canvas.polyline(lower_lid, shade(face.skin, 0.6), width=0.006)


def draw_nose(canvas: FaceCanvas, face: FaceSample) -> None:
    """Draw the nose as side shadows, a darker tip and two nostrils."""
    shadow = shade(face.skin, 0.72)
    canvas.polyline(np.array([[0.455, 0.33], [0.445, 0.45], [0.425, 0.55]]), shadow, width=0.018, feature="nose")
    canvas.polyline(np.array([[0.545, 0.33], [0.555, 0.45], [0.575, 0.55]]), shadow, width=0.018, feature="nose")
    canvas.polygon(ellipse_points((0.5, 0.575), (0.085, 0.04)), shade(face.skin, 0.8), feature="nose")
    canvas.polygon(ellipse_points((0.5, 0.565), (0.05, 0.03)), shade(face.skin, 0.95))
    for x in (0.455, 0.545):
        canvas.polygon(ellipse_points((x, 0.6), (0.022, 0.012)), shade(face.skin, 0.35), feature="nose")
    if face.cues.nose_wrinkle:
        for x in (0.46, 0.54):
            canvas.polyline(np.array([[x - 0.02, 0.40], [x, 0.42], [x + 0.02, 0.40]]), shadow, width=0.008)


def mouth_outline(face: FaceSample) -> tuple[np.ndarray, np.ndarray]:
    """Compute the upper and lower lip edges of the mouth opening, left corner to right corner."""
    half_width = 0.15 * face.cues.mouth_width
    t = np.linspace(-1.0, 1.0, 21)
    x = 0.5 + half_width * t
    corner_lift = face.cues.mouth_curve * t ** 2
    base_y = 0.775 - corner_lift + face.cues.mouth_curve * 0.3
    lip_raise = face.cues.upper_lip_raise * np.clip(1.0 - np.abs(t - 0.35) * 1.6, 0.0, 1.0)
    upper = base_y - face.cues.mouth_open * 0.35 * (1 - t ** 2) - lip_raise
    lower = base_y + face.cues.mouth_open * 0.65 * (1 - t ** 2) ** 0.7 + 0.002
    return np.stack([x, upper], axis=1), np.stack([x, lower], axis=1)


def draw_mouth(canvas: FaceCanvas, face: FaceSample) -> None:
    """Draw lips and, when open, the dark mouth and teeth."""
    upper, lower = mouth_outline(face)
    lip = shade(face.skin, 0.75, tint=(35, -15, -10))
    upper_lip = np.concatenate([upper, (upper + [0.0, -0.03])[::-1]])
    lower_lip = np.concatenate([lower, (lower + [0.0, 0.04])[::-1]])
    canvas.polygon(upper_lip, lip, feature="mouth")
    canvas.polygon(lower_lip, lip, feature="mouth")
    canvas.polygon(np.concatenate([upper, lower[::-1]]), (60, 15, 20), feature="mouth")
    if face.cues.mouth_open > 0.02 and face.teeth:
        teeth_lower = upper + [0.0, min(0.02, face.cues.mouth_open * 0.3)]
        canvas.polygon(np.concatenate([upper[3:-3], teeth_lower[3:-3][::-1]]), (235, 232, 220))
    canvas.polyline(upper, (70, 25, 25), width=0.008)


def background_layer(size: int, face: FaceSample) -> np.ndarray:
    """Draw a background colour with a vertical gradient, as float RGB."""
    ramp = np.linspace(-0.5, 0.5, size)[:, None, None]
    layer = np.asarray(face.background)[None, None, :] + ramp * np.asarray(face.background_gradient)
    return np.clip(np.broadcast_to(layer, (size, size, 3)), 0, 255).astype(np.float64)


def apply_camera(image: np.ndarray, face: FaceSample, rng: np.random.Generator) -> np.ndarray:
    """Apply lighting gradient, brightness, contrast, blur and sensor noise; return uint8."""
    size = image.shape[0]
    grid = np.linspace(-1.0, 1.0, size)
    light = 1.0 + face.light_gradient[0] * grid[None, :] + face.light_gradient[1] * grid[:, None]
    image = image * light[:, :, None] * face.brightness
    image = (image - 128.0) * face.contrast + 128.0
    if face.blur_sigma > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), face.blur_sigma)
    image = image + rng.normal(0.0, face.noise_sigma, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def render_face(face: FaceSample, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Draw one face.

    Args:
        face: the cues and nuisance variables of the face.
        size: output side in pixels.
        rng: generator for the sensor noise.

    Returns:
        The RGB image (size x size x 3 uint8) and the pixel bounding box
        [x0, y0, x1, y1] of each drawn feature (face, eyes, brows, nose,
        mouth, hair, and ears and neck when drawn). Eyes and brows are
        recorded one per side (`eye_left`, `brow_right`, ...), where left
        and right are as seen in the image.
    """
    side = size * SUPERSAMPLE
    fill = cv2.resize(background_layer(size, face), (side, side), interpolation=cv2.INTER_LINEAR)
    canvas = FaceCanvas(size, face, np.ascontiguousarray(fill))
    draw_head(canvas, face)
    draw_brows(canvas, face)
    draw_eyes(canvas, face)
    draw_nose(canvas, face)
    draw_mouth(canvas, face)
    image = cv2.resize(canvas.pixels, (size, size), interpolation=cv2.INTER_AREA)
    return apply_camera(image, face, rng), canvas.boxes


def image_rng(seed: int, split: str, class_name: str, index: int) -> np.random.Generator:
    """The random generator of one image, independent of every other image."""
    return np.random.default_rng([seed, SPLITS.index(split), CLASS_NAMES.index(class_name), index])


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def encode_png(image: np.ndarray) -> bytes:
    """Encode an RGB image as PNG bytes."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {image.shape} image as PNG")
    return encoded.tobytes()


def generate_demo_dataset(out_dir: Path, per_class: int = 100, val_per_class: int = 30,
                          size: int = 96, seed: int = 0) -> Path:
    """Write the demo dataset of drawn faces in the folder format.

    Args:
        out_dir: dataset root; `train/` and `val/` are created under it.
        per_class: training images per class.
        val_per_class: validation images per class.
        size: image side in pixels.
        seed: base seed; each image uses (seed, split, class, index).

    Returns:
        The path of the sidecar `demo_faces.json`, written after every image.
    """
    if size < 32:
        raise ValueError(f"demo image size {size} is too small to draw a face; use 32 or more")
    out_dir = Path(out_dir)
    counts = {"train": per_class, "val": val_per_class}
    features: dict[str, dict[str, list[float]]] = {}
    jobs = [(split, class_name, index) for split in SPLITS for class_name in CLASS_NAMES
            for index in range(counts[split])]
    for split, class_name, index in tqdm(jobs, desc="demo faces", unit="image", disable=None):
        rng = image_rng(seed, split, class_name, index)
        face = sample_face(rng, class_name)
        image, boxes = render_face(face, size, rng)
        relative = f"{split}/{class_name}/{class_name}_{index:04d}.png"
        write_atomic(out_dir / relative, encode_png(image))
        features[relative] = boxes

    sidecar = out_dir / SIDECAR_NAME
    settings = {"per_class": per_class, "val_per_class": val_per_class, "size": size, "seed": seed}
    content = {"generator": "pipeline.demo_faces", "settings": settings, "class_names": list(CLASS_NAMES),
               "features": features}
    write_atomic(sidecar, json.dumps(content, indent=1, sort_keys=True).encode())
    logger.info("wrote %d demo images to %s", len(jobs), out_dir)
    return sidecar


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: `python -m pipeline.demo_faces OUT`."""
    parser = argparse.ArgumentParser(description="Write the synthetic demo face dataset (folder format).")
    parser.add_argument("out", type=Path, help="dataset root to create")
    parser.add_argument("--per-class", type=int, default=100, help="training images per class (default 100)")
    parser.add_argument("--val-per-class", type=int, default=30, help="validation images per class (default 30)")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generate_demo_dataset(arguments.out, arguments.per_class, arguments.val_per_class, arguments.size, arguments.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
