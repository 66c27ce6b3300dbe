"""Offline face parser: dlib's 68 landmarks drawn into skin, eye, nose and mouth regions.

It needs no weights download: dlib-bin provides the predictor and
face-recognition-models ships `shape_predictor_68_face_landmarks.dat`. It
cannot see ears, neck or hair, so those parts never appear in its masks and
parser.json lists them as hidden.

Landmark indices follow the iBUG 300-W 68-point scheme: jaw 0-16, brows
17-26, nose bridge 27-30, nose base 31-35, eyes 36-47, outer lips 48-59.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.labels import PART_NAMES
from pipeline.parsers.base import FaceNotFoundError, FaceParser, ParsedMask, ParserSetupError, file_sha256

logger = logging.getLogger(__name__)

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
FACE_BOXES = ("whole", "detect")

# The predictor and drawing run on images upscaled so that the short side is at
# least this many pixels. Measured on 210 FER2013 48x48 faces: at 4x (192
# pixels) whole-image-box landmarks are within a median 0.033 inter-ocular
# distances of those from dlib's detector box, and a 1-pixel brow line at
# 48x48 would be too coarse to draw.
MIN_WORKING_SIDE = 192

# The skin region reaches above the brows by this fraction of the brow-to-chin
# height, to cover the forehead, which no landmark marks.
FOREHEAD_FRACTION = 0.25

# A face whose jaw-and-brow outline covers less than this fraction of the face
# box is treated as not found.
MIN_FACE_AREA_FRACTION = 0.1

# With the whole-image box the image is taken to be a face crop, so when its
# landmarks fail the check the detector's best candidate is accepted down to
# this score (dlib's own threshold is 0). On FER2013 this recovers faces half
# covered by a hand. The landmarks from its box must still pass the check.
WHOLE_BOX_DETECTOR_THRESHOLD = -0.5

# Images whose pixel standard deviation (0..255 scale) is below this are
# treated as blank: no face can be found in them.
MIN_CONTRAST = 2.0

SKIN, EYE, NOSE, MOUTH = (PART_NAMES.index(part) for part in ("skin", "eye", "nose", "mouth"))
VISIBLE_PARTS = ("background", "skin", "eye", "nose", "mouth")

JAW = slice(0, 17)
RIGHT_BROW = slice(17, 22)
LEFT_BROW = slice(22, 27)
BROWS = slice(17, 27)
NOSE_BRIDGE_TOP = 27
NOSE_TIP = 30
NOSE_BASE = slice(31, 36)
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
EYES = slice(36, 48)
OUTER_LIPS = slice(48, 60)
CHIN = 8


def predictor_path() -> Path:
    """Locate the 68-point model file inside the face-recognition-models package.

    The package is found with importlib rather than imported, because its
    `__init__` needs pkg_resources, which recent setuptools no longer ships.

    Raises:
        ParserSetupError: when the package or its model file is missing.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ParserSetupError(
            "the landmark parser needs the face-recognition-models package; "
            "install it with: pip install 'slfer[landmarks]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise ParserSetupError(f"landmark model {path} not found; reinstall face-recognition-models")
    return path


# One predictor (and detector) per process, loaded on first use, because dlib
# objects cannot be pickled to the worker processes.
_DLIB_MODELS: dict[str, object] = {}


def _dlib_model(name: str):
    if name not in _DLIB_MODELS:
        import dlib

        if name == "predictor":
            _DLIB_MODELS[name] = dlib.shape_predictor(str(predictor_path()))
        else:
            _DLIB_MODELS[name] = dlib.get_frontal_face_detector()
    return _DLIB_MODELS[name]


@dataclass(frozen=True)
class LandmarkMasker:
    """The whole landmark parse of one RGB image; picklable, so it runs in the worker processes.

    Attributes:
        face_box: "whole" uses the image as the face box (aligned crops);
            "detect" uses the largest face found by dlib's frontal face detector.
    """

    face_box: str = "whole"

    def __call__(self, image: np.ndarray) -> ParsedMask:
        height, width = image.shape[:2]
        if float(image.std()) < MIN_CONTRAST:
            # The predictor would place its mean face on a blank image.
            raise FaceNotFoundError(f"image is nearly uniform (pixel standard deviation {image.std():.1f})")
        scale = max(1, int(np.ceil(MIN_WORKING_SIDE / min(height, width))))
        working = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC) if scale > 1 else image

        points = self.locate_landmarks(working)
        mask = draw_parts(points, working.shape[:2])
        if scale > 1:
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        return ParsedMask(mask)

    def locate_landmarks(self, image: np.ndarray) -> np.ndarray:
        """Return 68 plausible landmarks of the face in `image`.

        With the whole-image box, implausible landmarks get a second try from
        the detector's box, because the predictor sometimes fails on an
        off-centre or partly covered face that the detector finds.

        Raises:
            FaceNotFoundError: when no box gives plausible landmarks.
        """
        import dlib

        if self.face_box == "whole":
            height, width = image.shape[:2]
            box = dlib.rectangle(0, 0, width - 1, height - 1)
            points = self.landmarks(image, box)
            try:
                check_plausible(points, box)
                return points
            except FaceNotFoundError as error:
                whole_box_error = error

        if self.face_box == "whole":
            faces, scores, _ = _dlib_model("detector").run(image, 0, WHOLE_BOX_DETECTOR_THRESHOLD)
            if len(faces) == 0:
                raise FaceNotFoundError(f"{whole_box_error}, and dlib's frontal face detector found no face")
            box = faces[int(np.argmax(scores))]
        else:
            faces = _dlib_model("detector")(image, 0)
            if len(faces) == 0:
                raise FaceNotFoundError("dlib's frontal face detector found no face")
            box = max(faces, key=lambda face: face.area())
        points = self.landmarks(image, box)
        check_plausible(points, box)
        return points

    @staticmethod
    def landmarks(image: np.ndarray, box) -> np.ndarray:
        """Return the 68 landmarks as a 68x2 float array of (x, y) pixels."""
        shape = _dlib_model("predictor")(image, box)
        return np.array([(shape.part(index).x, shape.part(index).y) for index in range(68)], dtype=np.float64)


def check_plausible(points: np.ndarray, box) -> None:
    """Reject landmarks that cannot be a face: parts out of vertical order, or a tiny outline.

    With a whole-image box the predictor always returns 68 points, even on an
    image without a face, so this check is what makes such an image fail.
    NOTE: a non-face image with enough texture can still pass it in "whole"
    mode; --face-box detect requires dlib's detector to find a face.

    Raises:
        FaceNotFoundError: when the landmarks fail the check.
    """
    eye_y = points[EYES, 1].mean()
    nose_y = points[NOSE_TIP, 1]
    mouth_y = points[OUTER_LIPS, 1].mean()
    if not eye_y < nose_y < mouth_y:
        raise FaceNotFoundError(
            f"landmarks are not a face: eye, nose tip and mouth rows are {eye_y:.0f}, {nose_y:.0f}, {mouth_y:.0f}"
        )

    outline = np.concatenate([points[JAW], points[BROWS][::-1]]).astype(np.float32)
    outline_area = cv2.contourArea(cv2.convexHull(outline))
    box_area = max(1, box.width() * box.height())
    if outline_area < MIN_FACE_AREA_FRACTION * box_area:
        raise FaceNotFoundError(
            f"landmarks are not a face: the face outline covers {outline_area / box_area:.1%} of the face box"
        )


def draw_parts(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Draw skin, nose, eye (eyes and brows) and mouth regions from 68 landmarks.

    Later parts are drawn over earlier ones, in the order skin, nose, eye, mouth.

    Returns:
        HxW uint8 mask of part indices.
    """
    mask = np.zeros(shape, dtype=np.uint8)
    face_height = np.linalg.norm(points[CHIN] - points[NOSE_BRIDGE_TOP])
    line_width = max(1, int(round(0.06 * face_height)))

    forehead = points[BROWS][::-1] - np.array([0.0, FOREHEAD_FRACTION * face_height])
    skin = np.concatenate([points[JAW], forehead])
    cv2.fillConvexPoly(mask, _pixels(cv2.convexHull(skin.astype(np.float32))), SKIN)

    bridge_half_width = 0.15 * np.linalg.norm(points[NOSE_BASE][0] - points[NOSE_BASE][-1])
    bridge = points[NOSE_BRIDGE_TOP] + np.array([[-bridge_half_width, 0.0], [bridge_half_width, 0.0]])
    nose = np.concatenate([bridge, points[NOSE_BASE]])
    cv2.fillConvexPoly(mask, _pixels(cv2.convexHull(nose.astype(np.float32))), NOSE)

    for eye in (points[RIGHT_EYE], points[LEFT_EYE]):
        cv2.fillPoly(mask, [_pixels(eye)], EYE)
    for brow in (points[RIGHT_BROW], points[LEFT_BROW]):
        cv2.polylines(mask, [_pixels(brow)], isClosed=False, color=EYE, thickness=line_width)

    cv2.fillPoly(mask, [_pixels(points[OUTER_LIPS])], MOUTH)
    return mask


def _pixels(points: np.ndarray) -> np.ndarray:
    return np.rint(points).astype(np.int32).reshape(-1, 2)


class LandmarkParser(FaceParser):
    """dlib 68-point landmarks drawn into skin, eye, nose and mouth; ears, neck and hair are hidden."""

    parser_id = "landmarks"
    visible_parts = VISIBLE_PARTS

    def __init__(self, face_box: str = "whole"):
        if face_box not in FACE_BOXES:
            raise ParserSetupError(f"face box {face_box!r} is not one of {', '.join(FACE_BOXES)}")
        self.face_box = face_box
        self.model_path = predictor_path()
        # The predictor file is this parser's weights.
        self.weights_sha256 = file_sha256(self.model_path)

    @property
    def prepare(self) -> LandmarkMasker:
        return LandmarkMasker(self.face_box)

    def parse_batch(self, prepared: list[ParsedMask], sizes: list[tuple[int, int]]) -> list[ParsedMask]:
        # The whole parse already ran in `prepare`, in the worker processes.
        return list(prepared)

    def settings(self) -> dict:
        return {
            "face_box": self.face_box,
            "min_working_side": MIN_WORKING_SIDE,
            "forehead_fraction": FOREHEAD_FRACTION,
            "whole_box_detector_threshold": WHOLE_BOX_DETECTOR_THRESHOLD,
        }

    def metadata(self) -> dict:
        metadata = super().metadata()
        metadata["predictor_file"] = str(self.model_path)
        metadata["note"] = "dlib 68-point landmarks cannot see ears, neck or hair; those parts are never marked"
        return metadata


def create_landmark_parser(*, face_box: str = "whole", **_unused) -> LandmarkParser:
    """Build the landmark parser (the registry's factory)."""
    return LandmarkParser(face_box)
