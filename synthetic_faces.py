"""Built-in synthetic faces with true Action Unit labels.

The project's default dataset and the ground truth of its evaluation: the same
identity can be drawn with any vector of the 17 OpenFace AU intensities, so
every edit has a true target image.

    identity = sample_identity(7)
    img = render(identity, aus, 128)        # HxWx3 uint8, aus in [0, 5]

Command line (writes the dataset in all three label formats):

    python synthetic_faces.py --out data/synthetic --num_images 2000 --image_size 128 --seed 0
    python synthetic_faces.py --contact_sheet docs/contact_sheet.png

Drawing: every shape is a polygon in face coordinates (unit square, x right,
y down), moved by the identity's pose (shift, scale, small roll), drawn with
PIL on a supersampled canvas and box-filtered down, which anti-aliases.
Soft effects (cheek bulge, wrinkles) are drawn as opaque colours blended with
the skin beforehand, so no alpha layers are needed and rendering stays fast.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pickle
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from utils.errors import UserError

AU_NAMES = ['AU01', 'AU02', 'AU04', 'AU05', 'AU06', 'AU07', 'AU09', 'AU10', 'AU12',
            'AU14', 'AU15', 'AU17', 'AU20', 'AU23', 'AU25', 'AU26', 'AU45']
AU_MEANINGS = ['inner brow raiser', 'outer brow raiser', 'brow lowerer', 'upper lid raiser',
               'cheek raiser', 'lid tightener', 'nose wrinkler', 'upper lip raiser',
               'lip corner puller', 'dimpler', 'lip corner depressor', 'chin raiser',
               'lip stretcher', 'lip tightener', 'lips part', 'jaw drop', 'blink']
AU_INDEX = {name: i for i, name in enumerate(AU_NAMES)}
NUM_AUS = len(AU_NAMES)

EMOTIONS = ['neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger', 'contempt']
# EMFACS prototypes. AU16 of classic disgust is not in the
# OpenFace set; contempt is one-sided in FACS, symmetric here (an AU vector
# has no side), with the dimpler dominating the smile.
EMOTION_PROTOTYPES = {
    'neutral': {},
    'happy': {'AU06': 1.0, 'AU12': 1.0},
    'sad': {'AU01': 1.0, 'AU04': 0.8, 'AU15': 1.0},
    'surprise': {'AU01': 1.0, 'AU02': 1.0, 'AU05': 0.9, 'AU26': 1.0},
    'fear': {'AU01': 1.0, 'AU02': 0.8, 'AU04': 0.8, 'AU05': 1.0, 'AU07': 0.6, 'AU20': 1.0, 'AU26': 0.7},
    'disgust': {'AU09': 1.0, 'AU10': 0.9, 'AU15': 0.6, 'AU17': 0.7},
    'anger': {'AU04': 1.0, 'AU05': 0.7, 'AU07': 1.0, 'AU23': 1.0},
    'contempt': {'AU12': 0.45, 'AU14': 1.0},
}
# AUs that often come along with a prototype in real data.
EMOTION_COMPANIONS = {'happy': ['AU25', 'AU10'], 'sad': ['AU17'], 'surprise': ['AU25'],
                      'fear': ['AU25'], 'disgust': ['AU04', 'AU07'], 'anger': ['AU17', 'AU10'],
                      'contempt': [], 'neutral': []}
EMOTION_PROBS = np.array([0.20, 0.13, 0.11, 0.11, 0.11, 0.11, 0.11, 0.12])

# Face-coordinate boxes (x0, y0, x1, y1) outside which an AU changes nothing,
# before the identity's pose is applied. Tests and evaluation rely on them.
_BROWS = (0.22, 0.22, 0.78, 0.47)
_EYES = (0.24, 0.34, 0.76, 0.52)
_CHEEKS = (0.22, 0.38, 0.78, 0.66)
_NOSE = (0.38, 0.42, 0.62, 0.70)
_MOUTH = (0.27, 0.56, 0.73, 0.88)
_JAW = (0.12, 0.56, 0.88, 1.05)
AU_REGIONS = {
    'AU01': _BROWS, 'AU02': _BROWS, 'AU04': _BROWS, 'AU05': _EYES, 'AU06': _CHEEKS,
    'AU07': _EYES, 'AU09': _NOSE, 'AU10': (0.30, 0.50, 0.70, 0.84), 'AU12': _MOUTH,
    'AU14': _MOUTH, 'AU15': _MOUTH, 'AU17': (0.30, 0.62, 0.70, 0.95), 'AU20': _MOUTH,
    'AU23': _MOUTH, 'AU25': _MOUTH, 'AU26': _JAW, 'AU45': _EYES,
}

CANVAS = 512          # supersampled drawing size (box-filtered down to the output size)
RENDERER_VERSION = 1  # bump when drawing changes, so caches built on old images are rebuilt

_SKIN = np.array([[247, 221, 200], [236, 192, 160], [214, 164, 124], [176, 124, 88],
                  [132, 88, 60], [96, 62, 44]], dtype=np.float64)
_HAIR = np.array([[24, 20, 18], [66, 42, 28], [120, 80, 44], [196, 160, 96],
                  [150, 68, 34], [160, 160, 160], [222, 206, 160]], dtype=np.float64)
_IRIS = np.array([[70, 44, 26], [52, 92, 140], [72, 112, 70], [120, 90, 50], [40, 30, 24]],
                 dtype=np.float64)


@dataclass
class Identity:
    """Everything that makes one synthetic person; AUs are applied on top."""
    skin: tuple
    hair: tuple
    hair_style: int          # 0 short, 1 long, 2 very short / bald
    iris: tuple
    lips: tuple
    brow: tuple
    background: tuple        # top colour
    background2: tuple       # bottom colour
    face_w: float            # half width of the face
    face_h: float            # half height of the face
    jaw_narrow: float        # how much the face narrows towards the chin
    eye_sep: float           # half distance between eye centres
    eye_w: float
    eye_h: float
    eye_y: float
    brow_y: float
    brow_thick: float
    nose_len: float
    nose_w: float
    mouth_w: float
    mouth_y: float
    lip_up: float
    lip_lo: float
    shift_x: float
    shift_y: float
    scale: float
    roll: float              # radians

    def to_dict(self):
        return asdict(self)


def _as_rng(seed_or_rng):
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


def _mix(a, b, t):
    return tuple(int(round(float(x))) for x in np.clip(np.asarray(a) * (1 - t) + np.asarray(b) * t, 0, 255))


def sample_identity(seed_or_rng) -> Identity:
    """A random identity; an int seed always gives the same identity."""
    rng = _as_rng(seed_or_rng)
    u = rng.uniform
    skin_t = u(0, len(_SKIN) - 1)
    lo = int(skin_t)
    skin = _SKIN[lo] * (1 - (skin_t - lo)) + _SKIN[min(lo + 1, len(_SKIN) - 1)] * (skin_t - lo)
    skin = np.clip(skin + rng.normal(0, 4, 3), 0, 255)
    hair = np.clip(_HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 6, 3), 0, 255)
    lips = np.clip(skin * np.array([0.80, 0.52, 0.52]) + np.array([40, 0, 4]) + rng.normal(0, 5, 3), 0, 255)
    brow = np.clip(hair * 0.7 + skin * 0.05, 0, 255)
    bg = rng.uniform(40, 230, 3)
    bg2 = np.clip(bg * u(0.6, 1.0) + rng.normal(0, 10, 3), 0, 255)
    return Identity(
        skin=_mix(skin, skin, 0), hair=_mix(hair, hair, 0), hair_style=int(rng.integers(3)),
        iris=_mix(_IRIS[rng.integers(len(_IRIS))], _IRIS[rng.integers(len(_IRIS))], u(0, 0.3)),
        lips=_mix(lips, lips, 0), brow=_mix(brow, brow, 0),
        background=_mix(bg, bg, 0), background2=_mix(bg2, bg2, 0),
        face_w=u(0.27, 0.32), face_h=u(0.37, 0.41), jaw_narrow=u(0.15, 0.40),
        eye_sep=u(0.105, 0.13), eye_w=u(0.052, 0.062), eye_h=u(0.024, 0.031), eye_y=u(0.445, 0.465),
        brow_y=u(0.355, 0.375), brow_thick=u(0.010, 0.018),
        nose_len=u(0.13, 0.17), nose_w=u(0.028, 0.04),
        mouth_w=u(0.088, 0.106), mouth_y=u(0.735, 0.755), lip_up=u(0.014, 0.021), lip_lo=u(0.018, 0.027),
        shift_x=u(-0.03, 0.03), shift_y=u(-0.045, -0.005), scale=u(1.04, 1.14), roll=u(-0.06, 0.06),
    )


def identity_from_dict(d: dict) -> Identity:
    return Identity(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class _Pen:
    """Maps face coordinates through the identity's pose to canvas pixels."""

    def __init__(self, draw, ident: Identity, size: int):
        self.draw, self.size = draw, size
        c, s = math.cos(ident.roll), math.sin(ident.roll)
        k = ident.scale * size
        # p = centre_canvas + k * R (p_face - 0.5) + shift
        self.m = np.array([[k * c, -k * s], [k * s, k * c]])
        self.t = np.array([(0.5 + ident.shift_x) * size, (0.5 + ident.shift_y) * size])

    def pts(self, xy):
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2) - 0.5
        p = xy @ self.m.T + self.t
        return [tuple(q) for q in p.tolist()]

    def poly(self, xy, fill):
        self.draw.polygon(self.pts(xy), fill=fill)

    def line(self, xy, fill, width):
        self.draw.line(self.pts(xy), fill=fill, width=max(1, int(round(width * self.size))), joint='curve')

    def ellipse(self, cx, cy, rx, ry, fill, n=48, rot=0.0):
        self.poly(_ellipse(cx, cy, rx, ry, n, rot), fill)


def _ellipse(cx, cy, rx, ry, n=48, rot=0.0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _thick_curve(xs, ys, half):
    """Polygon of a stroke of varying half-thickness along a curve (vertical offset)."""
    return np.concatenate([np.stack([xs, ys - half], 1), np.stack([xs[::-1], (ys + half)[::-1]], 1)])


def _aus01(aus) -> np.ndarray:
    a = np.asarray(aus, dtype=np.float64).reshape(-1)
    if a.shape[0] != NUM_AUS:
        raise ValueError(f'render() needs {NUM_AUS} AU intensities in the order {" ".join(AU_NAMES)}, '
                         f'got {a.shape[0]}')
    if not np.all(np.isfinite(a)):
        raise ValueError(f'render() got non-finite AU intensities: {a.tolist()}')
    return np.clip(a, 0, 5) / 5.0


def render(identity: Identity, aus, size: int = 128) -> np.ndarray:
    """Draw `identity` with AU intensities `aus` (17 values in [0, 5], in AU_NAMES order).

    Returns an (size, size, 3) uint8 RGB array.
    """
    a = dict(zip(AU_NAMES, _aus01(aus)))
    idn = identity
    img = _background(idn)
    draw = ImageDraw.Draw(img)
    pen = _Pen(draw, idn, CANVAS)
    skin = np.array(idn.skin, dtype=np.float64)

    _draw_head(pen, idn, a, skin)
    _draw_cheeks(pen, idn, a, skin)
    _draw_eyes(pen, idn, a, skin)
    _draw_brows(pen, idn, a, skin)
    _draw_nose(pen, idn, a, skin)
    _draw_mouth(pen, idn, a, skin)
    if size != CANVAS:
        img = img.resize((size, size), Image.BOX) if CANVAS % size else img.reduce(CANVAS // size)
    return np.asarray(img, dtype=np.uint8).copy()


def _background(idn):
    top = np.array(idn.background, dtype=np.float32)
    bottom = np.array(idn.background2, dtype=np.float32)
    t = np.linspace(0, 1, CANVAS, dtype=np.float32)[:, None]
    col = (top * (1 - t) + bottom * t).astype(np.uint8)           # (H, 3)
    arr = np.broadcast_to(col[:, None, :], (CANVAS, CANVAS, 3))
    return Image.fromarray(np.ascontiguousarray(arr), 'RGB')


def _face_outline(idn, jaw_drop, n=96):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    s = np.sin(t)
    low = np.clip(s, 0, None)
    x = 0.5 + idn.face_w * np.cos(t) * (1 - idn.jaw_narrow * low ** 2)
    y = 0.52 + idn.face_h * s + jaw_drop * low ** 4
    return np.stack([x, y], 1)


def _draw_head(pen, idn, a, skin):
    shade = _mix(skin, (0, 0, 0), 0.18)
    jaw_drop = 0.07 * a['AU26']
    # neck, hair behind the head, ears
    pen.poly([(0.5 - 0.11, 0.78), (0.5 + 0.11, 0.78), (0.5 + 0.13, 1.1), (0.5 - 0.13, 1.1)], shade)
    if idn.hair_style == 1:
        pen.poly([(0.5 - idn.face_w - 0.07, 0.30), (0.5 + idn.face_w + 0.07, 0.30),
                  (0.5 + idn.face_w + 0.09, 0.86), (0.5 - idn.face_w - 0.09, 0.86)], idn.hair)
    if idn.hair_style != 2:
        pen.ellipse(0.5, 0.40, idn.face_w + 0.05, idn.face_h * 0.75, idn.hair)
    for side in (-1, 1):
        pen.ellipse(0.5 + side * (idn.face_w - 0.005), 0.50, 0.035, 0.055, shade)
    outline = _face_outline(idn, jaw_drop)
    pen.poly(outline, shade)
    inner = (outline - [0.5, 0.52]) * [0.97, 0.975] + [0.5, 0.52]
    pen.poly(inner, idn.skin)
    # fringe over the forehead (never below y = 0.25, clear of the brows)
    if idn.hair_style == 2:
        pen.ellipse(0.5, 0.19, idn.face_w * 0.85, 0.05, _mix(skin, idn.hair, 0.35))
    else:
        xs = np.linspace(-1, 1, 25)
        top = 0.13 + 0.0 * xs
        bottom = 0.20 + 0.045 * (1 - xs ** 2) * (0.6 + 0.4 * np.cos(xs * 7.0)) - 0.05 * xs ** 4
        hx = 0.5 + xs * (idn.face_w + 0.01)
        pen.poly(np.concatenate([np.stack([hx, top], 1), np.stack([hx[::-1], bottom[::-1]], 1)]), idn.hair)
    if a['AU17'] > 0:   # chin boss: raised, dimpled chin
        cy = 0.86 + jaw_drop * 0.9
        pen.ellipse(0.5, cy, 0.055, 0.028, _mix(skin, (90, 40, 30), 0.35 * a['AU17']))
        for dx, dy in ((-0.015, -0.004), (0.012, 0.003), (0.0, 0.008), (0.02, -0.006), (-0.022, 0.006)):
            pen.ellipse(0.5 + dx, cy + dy, 0.004, 0.003, _mix(skin, (60, 30, 20), 0.45 * a['AU17']), n=12)


def _draw_cheeks(pen, idn, a, skin):
    # Nasolabial folds, deepened by the upper lip raiser and the smile.
    depth = 0.10 + 0.45 * a['AU10'] + 0.35 * a['AU12']
    for side in (-1, 1):
        # cheek bulge of AU06: raised, rounder, slightly flushed
        if a['AU06'] > 0:
            cx = 0.5 + side * (idn.eye_sep + 0.025)
            cy = 0.575 - 0.03 * a['AU06']
            pen.ellipse(cx, cy, 0.055, 0.04, _mix(skin, (200, 80, 70), 0.25 * a['AU06']))
            pen.ellipse(cx - side * 0.008, cy - 0.008, 0.03, 0.018, _mix(skin, (255, 255, 255), 0.16 * a['AU06']))
        x0 = 0.5 + side * (idn.nose_w + 0.02)
        ex = 0.5 + side * (idn.mouth_w + 0.02 + 0.02 * a['AU12'] + 0.02 * a['AU20'])
        ys = np.linspace(idn.eye_y + idn.nose_len - 0.005, idn.mouth_y + 0.02, 8)
        tt = np.linspace(0, 1, 8)
        xs = x0 + (ex - x0) * np.sin(tt * np.pi / 2) ** 1.5 + side * 0.012 * a['AU12'] * np.sin(tt * np.pi)
        pen.line(np.stack([xs, ys - 0.012 * a['AU10'] * (1 - tt)], 1), _mix(skin, (70, 30, 20), depth * 0.6), 0.005)


def _draw_eyes(pen, idn, a, skin):
    up = idn.eye_h * (1 + 0.8 * a['AU05']) * (1 - 0.35 * a['AU07']) * (1 - 0.15 * a['AU06'])
    up *= (1 - a['AU45'])
    lo = idn.eye_h * 0.8 * (1 - 0.8 * a['AU07']) * (1 - 0.35 * a['AU06'])
    lo = max(lo, 0.002)
    lid_col = _mix(skin, (0, 0, 0), 0.25)
    for side in (-1, 1):
        ex = 0.5 + side * idn.eye_sep
        ey = idn.eye_y
        xs = np.linspace(-1, 1, 33)
        g = np.sqrt(np.clip(1 - xs ** 2, 0, None)) ** 0.9
        px = ex + xs * idn.eye_w
        tilt = -0.006 * side * xs  # outer corners slightly higher
        y_up = ey + tilt - up * g
        y_lo = ey + tilt + lo * g
        # socket shadow under the brow
        pen.ellipse(ex, ey - 0.008, idn.eye_w * 1.25, idn.eye_h * 1.9, _mix(skin, (60, 30, 30), 0.10))
        if up > 0.002:
            opening = np.concatenate([np.stack([px, y_up], 1), np.stack([px[::-1], y_lo[::-1]], 1)])
            pen.poly(opening, (245, 242, 236))
            for r, col in ((0.021, idn.iris), (0.0095, (12, 10, 10))):
                t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
                cx, cy = ex + r * np.cos(t), ey + 0.002 + r * np.sin(t)
                u = np.clip((cx - ex) / idn.eye_w, -1, 1)
                gg = np.sqrt(np.clip(1 - u ** 2, 0, None)) ** 0.9
                tl = -0.006 * side * u
                cy = np.clip(cy, ey + tl - up * gg, ey + tl + lo * gg)
                pen.poly(np.stack([cx, cy], 1), col)
            pen.ellipse(ex + 0.007, ey - 0.005, 0.004, 0.004, (250, 250, 250), n=12)
        # upper lid with lashes, lower lid line, lid crease
        pen.line(np.stack([px, y_up], 1), (30, 22, 20), 0.006)
        pen.line(np.stack([px, y_lo], 1), lid_col, 0.003)
        crease = y_up - 0.012 - 0.006 * a['AU05']
        pen.line(np.stack([px[4:-4], crease[4:-4]], 1), _mix(skin, (60, 30, 30), 0.35), 0.003)
        if a['AU06'] > 0:  # crow's feet
            for k, dy in enumerate((-0.012, 0.0, 0.012)):
                x1 = ex + side * (idn.eye_w + 0.012)
                pen.line([(x1, ey + dy * 0.6), (x1 + side * 0.03, ey + dy * 1.6)],
                         _mix(skin, (70, 35, 25), 0.55 * a['AU06']), 0.004)


def _draw_brows(pen, idn, a, skin):
    for side in (-1, 1):
        inner_x = 0.5 + side * (0.045 - 0.015 * a['AU04'])
        outer_x = 0.5 + side * (idn.eye_sep + idn.eye_w + 0.015)
        lower = 0.028 * a['AU04']
        inner_y = idn.brow_y + lower + 0.018 * a['AU04'] - 0.055 * a['AU01'] + 0.005
        outer_y = idn.brow_y + lower - 0.05 * a['AU02'] + 0.012
        t = np.linspace(0, 1, 24)
        xs = inner_x + (outer_x - inner_x) * t
        arch = (0.018 + 0.01 * a['AU02'] - 0.008 * a['AU04']) * np.sin(np.pi * t * 0.85)
        ys = inner_y + (outer_y - inner_y) * t - arch
        half = idn.brow_thick * (1.1 - 0.6 * t) * 0.5 + 0.002
        pen.poly(_thick_curve(xs, ys, half), idn.brow)
    if a['AU04'] > 0:   # vertical furrows between the brows
        col = _mix(skin, (60, 30, 20), 0.6 * a['AU04'])
        for dx in (-0.012, 0.012):
            pen.line([(0.5 + dx, idn.brow_y + 0.01), (0.5 + dx * 0.7, idn.brow_y + 0.05)], col, 0.004)
    if a['AU01'] > 0 or a['AU02'] > 0:   # forehead wrinkles, centred for AU01, wider for AU02
        w = 0.04 + 0.08 * a['AU02'] / max(a['AU01'] + a['AU02'], 1e-6)
        col = _mix(skin, (80, 40, 30), 0.45 * max(a['AU01'], a['AU02']))
        for k in range(2):
            y = idn.brow_y - 0.06 - 0.018 * k
            xs = np.linspace(-w, w, 9)
            pen.line(np.stack([0.5 + xs, y + 0.006 * (xs / w) ** 2], 1), col, 0.003)


def _draw_nose(pen, idn, a, skin):
    top = idn.eye_y
    tip_y = idn.eye_y + idn.nose_len
    lift = 0.014 * a['AU09'] + 0.006 * a['AU10']
    line_col = _mix(skin, (60, 30, 20), 0.35)
    for side in (-1, 1):   # sides of the bridge
        pen.line([(0.5 + side * 0.018, top + 0.03), (0.5 + side * 0.022, tip_y - 0.035)],
                 _mix(skin, (60, 30, 20), 0.12), 0.006)
    w = idn.nose_w * (1 + 0.2 * a['AU09'])
    pen.ellipse(0.5, tip_y - 0.01 - lift * 0.6, w * 0.62, 0.022, _mix(skin, (255, 230, 210), 0.12))
    for side in (-1, 1):   # alae and nostrils
        pen.ellipse(0.5 + side * w * 0.8, tip_y - lift, w * 0.38, 0.016, _mix(skin, (80, 40, 30), 0.18))
        pen.ellipse(0.5 + side * w * 0.45, tip_y + 0.004 - lift, w * 0.26, 0.007, (58, 32, 28), n=20, rot=side * 0.3)
    pen.line([(0.5 - w * 0.9, tip_y - lift + 0.006), (0.5, tip_y + 0.012 - lift), (0.5 + w * 0.9, tip_y - lift + 0.006)],
             line_col, 0.003)
    if a['AU09'] > 0:   # wrinkles across the bridge
        col = _mix(skin, (60, 30, 20), 0.7 * a['AU09'])
        for k in range(3):
            y = top + 0.035 + 0.014 * k
            pen.line([(0.5 - 0.03, y + 0.004), (0.5, y - 0.002), (0.5 + 0.03, y + 0.004)], col, 0.004)


def _draw_mouth(pen, idn, a, skin):
    mw = idn.mouth_w * (1 + 0.30 * a['AU12'] + 0.45 * a['AU20'] - 0.14 * a['AU14'] - 0.22 * a['AU23'])
    corner = -0.036 * a['AU12'] + 0.038 * a['AU15'] - 0.010 * a['AU14'] + 0.014 * a['AU20'] + 0.004
    thin = (1 - 0.75 * a['AU23']) * (1 - 0.35 * a['AU20'])
    up_raise = 0.008 * a['AU25'] + 0.018 * a['AU10']          # upper lip lifted off the teeth
    jaw = 0.07 * a['AU26']
    low_drop = 0.018 * a['AU25'] + 0.7 * jaw - 0.012 * a['AU17']
    my = idn.mouth_y
    t = np.linspace(-1, 1, 41)
    prof = np.clip(1 - t ** 2, 0, None) ** 0.6
    mid = my + corner * t ** 2 - 0.008 * a['AU17'] * (1 - t ** 2)
    xs = 0.5 + mw * t
    ub = mid - up_raise * prof
    bow = 0.3 * np.exp(-(t / 0.18) ** 2) * idn.lip_up
    ut = ub - idn.lip_up * thin * prof - 0.0015 + bow * prof
    lt = mid + low_drop * prof
    lb = lt + idn.lip_lo * thin * prof * (1 + 0.5 * a['AU17']) + 0.0015
    if np.any(lt - ub > 1e-4):   # open mouth: dark interior, teeth clipped to the opening
        pen.poly(np.concatenate([np.stack([xs, ub], 1), np.stack([xs[::-1], lt[::-1]], 1)]), (70, 20, 24))
        teeth_lo = np.minimum(ub + 0.022, lt)
        pen.poly(np.concatenate([np.stack([xs * 0.92 + 0.04, ub], 1),
                                 np.stack([(xs * 0.92 + 0.04)[::-1], teeth_lo[::-1]], 1)]), (236, 232, 220))
        low_teeth_top = np.maximum(lt - 0.010, ub)
        if a['AU26'] > 0.3:
            pen.poly(np.concatenate([np.stack([xs * 0.8 + 0.1, low_teeth_top], 1),
                                     np.stack([(xs * 0.8 + 0.1)[::-1], lt[::-1]], 1)]), (220, 214, 200))
    lip_dark = _mix(idn.lips, (0, 0, 0), 0.15)
    pen.poly(np.concatenate([np.stack([xs, ut], 1), np.stack([xs[::-1], ub[::-1]], 1)]), lip_dark)
    pen.poly(np.concatenate([np.stack([xs, lt], 1), np.stack([xs[::-1], lb[::-1]], 1)]), idn.lips)
    pen.line(np.stack([xs, (ub + lt) / 2 if np.all(lt - ub <= 1e-4) else ub], 1), (90, 40, 40), 0.003)
    if a['AU14'] > 0:   # dimples beside the corners
        col = _mix(skin, (70, 30, 20), 0.8 * a['AU14'])
        for side in (-1, 1):
            cx = 0.5 + side * (mw + 0.012)
            cy = my + corner
            pen.line([(cx, cy - 0.018), (cx + side * 0.009, cy), (cx, cy + 0.018)], col, 0.007)


def region_mask(identity: Identity, au: str, size: int, margin: int = 1) -> np.ndarray:
    """(size, size) bool mask of the pixels AU `au` may change for this identity:
    its AU_REGIONS box moved by the identity's pose, plus `margin` pixels."""
    x0, y0, x1, y1 = AU_REGIONS[au]
    corners = np.array(_Pen(None, identity, size).pts([(x0, y0), (x1, y0), (x0, y1), (x1, y1)]))
    (cx0, cy0), (cx1, cy1) = corners.min(0) - margin, corners.max(0) + margin
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return (xx >= cx0) & (xx <= cx1) & (yy >= cy0) & (yy <= cy1)


# --------------------------------------------------------------------------- labels

def sample_labels(rng: np.random.Generator, num_classes: int = 8):
    """One (AU intensities in [0, 5], emotion index) drawn like real OpenFace data."""
    probs = EMOTION_PROBS[:num_classes] / EMOTION_PROBS[:num_classes].sum()
    emotion = int(rng.choice(num_classes, p=probs))
    name = EMOTIONS[emotion]
    aus = np.zeros(NUM_AUS)
    if name == 'neutral':
        strength = 0.0
    else:
        strength = rng.uniform(1.6, 5.0)
        for au, w in EMOTION_PROTOTYPES[name].items():
            aus[AU_INDEX[au]] = strength * w * rng.uniform(0.75, 1.1)
        for au in EMOTION_COMPANIONS[name]:
            if rng.random() < 0.35:
                aus[AU_INDEX[au]] = strength * rng.uniform(0.2, 0.7)
    # stray AUs and low-level noise, as OpenFace reports on real faces
    stray = rng.random(NUM_AUS) < 0.08
    aus += stray * rng.uniform(0.3, 1.6, NUM_AUS)
    aus += np.abs(rng.normal(0, 0.15, NUM_AUS)) * (rng.random(NUM_AUS) < 0.5)
    if rng.random() < 0.04:
        aus[AU_INDEX['AU45']] = rng.uniform(2.5, 5.0)   # caught mid-blink
    return np.round(np.clip(aus, 0, 5), 2), emotion


def emotion_prototype(name_or_index, intensity: float = 4.0) -> np.ndarray:
    """AU vector (0-5) of an emotion's prototype at the given intensity."""
    name = EMOTIONS[name_or_index] if isinstance(name_or_index, (int, np.integer)) else name_or_index
    aus = np.zeros(NUM_AUS)
    for au, w in EMOTION_PROTOTYPES[name].items():
        aus[AU_INDEX[au]] = min(5.0, intensity * w)
    return aus


# --------------------------------------------------------------------------- dataset writer

def identity_seed(seed: int, index: int) -> int:
    """The int seed of the `index`-th identity of a dataset made with `seed`."""
    return int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0])


def dataset_plan(num_images: int, seed: int, images_per_identity: int = 8, test_fraction: float = 0.1):
    """Image names, identity seeds, splits, AUs and emotions, all from `seed`."""
    num_ids = max(2, math.ceil(num_images / images_per_identity))
    num_test = max(1, int(round(num_ids * test_fraction)))
    rng = np.random.default_rng([seed, 2])
    test_ids = set(rng.choice(num_ids, num_test, replace=False).tolist())
    rows = []
    for i in range(num_images):
        ident = i % num_ids
        aus, emotion = sample_labels(np.random.default_rng([seed, 3, i]))
        rows.append({'image': f'{i:06d}.png', 'identity': ident, 'identity_seed': identity_seed(seed, ident),
                     'split': 'test' if ident in test_ids else 'train', 'aus': aus, 'expression': emotion})
    return rows


# What write_dataset puts in its folder (.cache: files derived from the data by data_loader and evaluate).
GENERATED_NAMES = frozenset({'images', 'aus.txt', 'aus_openface.pkl', 'train_ids.csv', 'test_ids.csv',
                             'training.csv', 'test.csv', 'meta.csv', 'dataset.json', '.cache'})
IMAGE_NAME = re.compile(r'\d{6}\.png')


def foreign_entry(out: str):
    """The first path in folder `out` that write_dataset does not write, or None."""
    for name in sorted(os.listdir(out)):
        if name not in GENERATED_NAMES:
            return os.path.join(out, name)
    img_dir = os.path.join(out, 'images')
    if os.path.isdir(img_dir):
        for name in sorted(os.listdir(img_dir)):
            if not IMAGE_NAME.fullmatch(name):
                return os.path.join(img_dir, name)
    return None


def check_replaceable(out: str):
    """write_dataset replaces an older dataset in `out` whole; it refuses a folder that holds anything else."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(f'{out}: not a folder; the synthetic faces need a folder of their own')
    foreign = foreign_entry(out) if os.path.isdir(out) else None
    if foreign:
        raise FileExistsError(f'{out}: holds {foreign}, which the synthetic-face generator did not write; it '
                              f'replaces the whole folder, so give it an empty or new one (--synthetic_dir, --out)')


def write_dataset(out: str, num_images: int = 2000, image_size: int = 128, seed: int = 0, verbose=True):
    """Write the dataset to folder `out`, replacing an older synthetic dataset there. It is written
    beside `out` and moved into place at the end, so no run reads a half-written folder or one that
    mixes two datasets (a smaller dataset written over a larger one left the larger one's extra images)."""
    target = os.path.realpath(out)      # a symlinked data folder: replace the folder it points to
    check_replaceable(target)
    staging = f'{target}.partial-{os.getpid()}'
    shutil.rmtree(staging, ignore_errors=True)
    try:
        info = _write_files(staging, num_images, image_size, seed, verbose, shown_as=out)
        _install(staging, target, num_images, image_size, seed)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def ensure_dataset(root: str, num_images: int, image_size: int):
    """The default dataset of main.py: written to `root` unless it already holds this count and size."""
    if is_synthetic_dataset(root, num_images, image_size, 0):
        return
    print(f'generating {num_images} synthetic faces at {image_size} px in {root} ...', flush=True)
    try:
        write_dataset(root, num_images, image_size, seed=0)
    except (FileExistsError, NotADirectoryError) as e:
        raise UserError(str(e)) from None


def _install(staging: str, out: str, num_images: int, image_size: int, seed: int):
    """Move the finished dataset from `staging` to `out` by renames. An older dataset there is
    replaced (its .cache, keyed by content, is kept); if another process installed the same dataset
    meanwhile, that one stays."""
    if is_synthetic_dataset(out, num_images, image_size, seed):
        return
    old = None
    if os.path.isdir(out):
        check_replaceable(out)
        if os.path.isdir(os.path.join(out, '.cache')):
            os.replace(os.path.join(out, '.cache'), os.path.join(staging, '.cache'))
        old = f'{out}.old-{os.getpid()}'
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except OSError:
        if not is_synthetic_dataset(out, num_images, image_size, seed):   # not another process's same dataset
            raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _write_files(out: str, num_images: int, image_size: int, seed: int, verbose: bool, shown_as: str):
    t0 = time.time()
    rows = dataset_plan(num_images, seed)
    img_dir = os.path.join(out, 'images')
    os.makedirs(img_dir, exist_ok=True)
    identities = {}
    for k, row in enumerate(rows):
        ident = identities.get(row['identity'])
        if ident is None:
            ident = identities[row['identity']] = sample_identity(row['identity_seed'])
        Image.fromarray(render(ident, row['aus'], image_size)).save(os.path.join(img_dir, row['image']),
                                                                   compress_level=1)
        if verbose and (k + 1) % 500 == 0:
            print(f'  {k + 1}/{len(rows)} images ({time.time() - t0:.1f}s)', flush=True)

    def fmt(aus):
        return ' '.join(f'{v:.2f}' for v in aus)

    with open(os.path.join(out, 'aus.txt'), 'w') as f:
        for row in rows:
            f.write(f"{row['image']} {fmt(row['aus'])}\n")
    with open(os.path.join(out, 'aus_openface.pkl'), 'wb') as f:
        pickle.dump({r['image'][:-4]: r['aus'].astype(np.float64) for r in rows}, f, protocol=4)
    for split in ('train', 'test'):
        with open(os.path.join(out, f'{split}_ids.csv'), 'w') as f:
            f.write(''.join(r['image'] + '\n' for r in rows if r['split'] == split))
    with open(os.path.join(out, 'training.csv'), 'w', newline='') as f:
        w = csv.writer(f, lineterminator='\n')
        w.writerow(['subDirectory_filePath', 'expression'])
        w.writerows([f"images/{r['image']}", r['expression']] for r in rows if r['split'] == 'train')
    with open(os.path.join(out, 'test.csv'), 'w', newline='') as f:
        w = csv.writer(f, lineterminator='\n')
        w.writerow(['subDirectory_filePath', 'expression'])
        w.writerows([f"images/{r['image']}", r['expression']] for r in rows if r['split'] == 'test')
    # What evaluation needs to re-render any image's identity with other AUs.
    with open(os.path.join(out, 'meta.csv'), 'w', newline='') as f:
        w = csv.writer(f, lineterminator='\n')
        w.writerow(['image', 'identity', 'identity_seed', 'split', 'expression'])
        w.writerows([r['image'], r['identity'], r['identity_seed'], r['split'], r['expression']] for r in rows)
    info = {'generator': 'synthetic_faces.py', 'renderer_version': RENDERER_VERSION, 'seed': seed,
            'num_images': num_images, 'image_size': image_size, 'au_names': AU_NAMES,
            'emotions': EMOTIONS, 'num_identities': len(identities)}
    with open(os.path.join(out, 'dataset.json'), 'w') as f:
        json.dump(info, f, indent=1)
    if verbose:
        n_test = sum(r['split'] == 'test' for r in rows)
        print(f'wrote {num_images} images ({image_size}px, {len(identities)} identities, '
              f'{n_test} held-out test images) to {shown_as} in {time.time() - t0:.1f}s', flush=True)
    return info


def read_meta(root: str):
    """{image name: (identity seed, split)} of a dataset written by write_dataset."""
    with open(os.path.join(root, 'meta.csv'), newline='') as f:
        return {r['image']: (int(r['identity_seed']), r['split']) for r in csv.DictReader(f)}


def is_synthetic_dataset(root: str, num_images: int, image_size: int, seed: int) -> bool:
    """True when `root` holds a complete dataset written with these settings."""
    try:
        with open(os.path.join(root, 'dataset.json')) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    if not (info.get('renderer_version') == RENDERER_VERSION and info.get('seed') == seed
            and info.get('num_images') == num_images and info.get('image_size') == image_size):
        return False
    try:   # and nothing more: a folder once written over in place could hold an older dataset's extra images
        return len(os.listdir(os.path.join(root, 'images'))) == num_images
    except OSError:
        return False


# --------------------------------------------------------------------------- contact sheet

def contact_sheet(path: str, cell: int = 96, seeds=(1, 2, 3), levels=(0.0, 2.5, 5.0)):
    """Rows: AUs; columns: intensities 0, 2.5, 5 for a few identities."""
    label_w = 150
    cols = len(seeds) * len(levels)
    sheet = Image.new('RGB', (label_w + cols * cell + (len(seeds) - 1) * 8, 24 + NUM_AUS * cell), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    idents = [sample_identity(s) for s in seeds]
    for j, (s, lv) in enumerate((s, lv) for s in range(len(seeds)) for lv in levels):
        d.text((label_w + j * cell + s * 8 + 4, 6), f'id{seeds[s]} {lv:g}', fill=(0, 0, 0))
    for i, name in enumerate(AU_NAMES):
        y = 24 + i * cell
        d.text((6, y + cell // 2 - 12), name, fill=(0, 0, 0))
        d.text((6, y + cell // 2 + 2), AU_MEANINGS[i], fill=(80, 80, 80))
        for s, ident in enumerate(idents):
            for k, lv in enumerate(levels):
                aus = np.zeros(NUM_AUS)
                aus[i] = lv
                x = label_w + (s * len(levels) + k) * cell + s * 8
                sheet.paste(Image.fromarray(render(ident, aus, cell)), (x, y))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', help='dataset folder to write')
    p.add_argument('--num_images', type=int, default=2000)
    p.add_argument('--image_size', type=int, default=128)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--contact_sheet', metavar='PNG', help='write the AU contact sheet to this file')
    args = p.parse_args(argv)
    if not args.out and not args.contact_sheet:
        p.error('give --out DIR (a dataset) or --contact_sheet FILE.png')
    if args.contact_sheet:
        print('contact sheet:', contact_sheet(args.contact_sheet))
    if args.out:
        if args.num_images < 2 or args.image_size < 8:
            p.error('--num_images must be >= 2 and --image_size >= 8')
        try:
            write_dataset(args.out, args.num_images, args.image_size, args.seed)
        except (FileExistsError, NotADirectoryError) as e:
            p.error(str(e))


if __name__ == '__main__':
    sys.exit(main())
