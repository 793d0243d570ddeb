"""The faces of one photo or frame for --mode prepare: found, aligned with the model's framing exactly as
test mode cuts photos (editing/photos.find_faces, editing/framing.warp_crop), checked, and their AUs read
(editing/au_reader.py, MediaPipe's blendshapes).

A face is rejected, with the reason, when its crop would upscale it more than MAX_UPSCALE times, when it is
turned too far to one side (the nose tip's place between the eyes, from the landmarks), when more than
MAX_PADDED of the crop lies past the photo's edge, or when the AU reader reads no face in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from editing import photos
from editing import framing as fr

MAX_UPSCALE = 2.0    # crop pixels per photo pixel: more, and the crop is mostly interpolation
MAX_TURN = 0.35      # |nose tip's place between the eyes - 0.5| (0: frontal; ~0.5: the nose at an eye)
MAX_PADDED = 0.25    # share of the crop past the photo's edge (filled by repeating the edge pixels)


@dataclass
class Face:
    """One face of a photo: its `crop` (size, size, 3) uint8, `reason` it is rejected ('' when kept) and `why`
    (the kind of reason, which the report counts), `aus`
    (17,) in [0, 5] when kept, and what was measured: the box area in photo pixels, the upscale, the
    turn and the padded share."""
    crop: np.ndarray | None
    reason: str
    why: str
    aus: np.ndarray | None
    box_area: float
    centre: tuple
    upscale: float
    turn: float
    padded: float


def padded_share(matrix, size, width, height):
    """Share of the crop's pixels whose photo position lies past the photo's edge."""
    centres = (np.mgrid[0:size, 0:size].reshape(2, -1).T[:, ::-1] + 0.5)
    where = fr.apply(fr.invert(matrix), centres)
    inside = (where[:, 0] >= 0) & (where[:, 0] < width) & (where[:, 1] >= 0) & (where[:, 1] < height)
    return float(1 - inside.mean())


def turn_of(points_in_crop):
    """How far the face is turned: |the nose tip's place on the line between the eyes - 0.5|."""
    left, right, nose = points_in_crop[0], points_in_crop[1], points_in_crop[2]
    axis = right - left
    t = float(np.dot(nose - left, axis) / max(np.dot(axis, axis), 1e-9))
    return abs(t - 0.5)


def faces_of(pixels, framing, size, reader, why='--mode prepare'):
    """[Face] of every face in a photo (left to right, numbered as test mode numbers them)."""
    h, w = pixels.shape[:2]
    out = []
    for det, matrix in photos.find_faces(pixels, framing, size, why=why):
        upscale = fr.scale_of(matrix)
        turn = turn_of(fr.apply(matrix, det.points) / size)
        padded = padded_share(matrix, size, w, h)
        x, y, bw, bh = det.box
        face = Face(None, '', '', None, float(bw * bh), (float(x + bw / 2), float(y + bh / 2)), upscale, turn, padded)
        if upscale > MAX_UPSCALE:
            face.why, face.reason = 'face too small', (f'face too small: {size} px would upscale it {upscale:.1f}x '
                                                       f'(at most {MAX_UPSCALE:g}x)')
        elif turn > MAX_TURN:
            face.why, face.reason = 'turned too far', (f'turned too far to one side (nose at {0.5 + turn:.2f} of '
                                                       'the way between the eyes)')
        elif padded > MAX_PADDED:
            face.why, face.reason = 'crop past the edge', (f'{padded:.0%} of the crop past the photo\'s edge '
                                                           f'(at most {MAX_PADDED:.0%})')
        else:
            read = reader.face(pixels, det.points)
            if read is None:
                face.why = face.reason = 'the AU reader found no face in the crop'
            else:
                face.aus = read[0]
        face.crop = fr.warp_crop(pixels, matrix, size)
        out.append(face)
    return out

