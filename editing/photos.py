"""Faces in photos: found with five landmarks, cut out with the model's framing, pasted back.

Test mode edits aligned face crops. A photo that is not such a crop is handled here:

1. find the faces and their five landmarks (editing/landmarks.py: RetinaFace, an optional
   dependency), or take boxes given by hand (`--face_box x,y,w,h`);
2. cut each face out with the framing the model was trained on (editing/framing.py): the
   similarity transform that puts the landmarks where the training crops had them, so a rolled
   face is upright in its crop. The landmarks are measured in the photo, then twice again in an
   upright crop of the face, where the detector sees the face as it was trained to (a face
   rolled by 20 degrees then gives the crop of the upright face). A box given by hand is framed
   as a square of side box * (1 + 2 * --face_margin);
3. paste each edit back through the inverse transform, feathered at the crop's edge: no pixel
   outside the crops changes at all.

Without the detector, aligned crops and `--face_box` still work; asking for detection says what
to install.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict

import numpy as np
from PIL import Image, ImageDraw, ImageOps

import data_loader as dl
from editing import framing as fr
from editing import landmarks
from utils.errors import FlagError, MissingInput, command

DEFAULT_MARGIN = 0.15      # --face_box: crop side = box * (1 + 2 * margin)
ANIMATION_MAX_SIDE = 1024  # animated photos (GIF/MP4) are scaled down to this longer side; stills are not
REFINE_CONTEXT = 2.0       # the second look: an upright crop this many times the framing's side ...
REFINE_SIDE = 320          # ... at this many pixels (faces of 80-160 px: the detector's best range)
REFINE_PASSES = 2          # looks after the first: a face rolled 20-25 degrees gives the upright face's
                           # crop within 1-2 px at 128 px (median; 3-9 px after one look, docs/photos_and_videos.md)
CALIBRATION_SIDE = 256     # training crops are brought to this size before detection (small crops, small faces)


class Photo:
    """A full-resolution photo that face crops were cut from."""

    def __init__(self, name, path, pixels):
        self.name, self.path, self.pixels = name, path, pixels

    @property
    def size(self):
        return self.pixels.shape[1], self.pixels.shape[0]


class Face(tuple):
    """(name, crop) as test mode unpacks it, plus where the crop came from.

    `photo` is None for an aligned crop; for a face found in a photo it is the Photo, `matrix` the
    (2, 3) transform photo -> crop pixels, `points` the five landmarks in the photo (None for a box
    given by hand) and `box` the detector's or the given box (x, y, w, h)."""

    def __new__(cls, name, crop, photo=None, matrix=None, points=None, box=None):
        self = super().__new__(cls, (name, crop))
        self.photo, self.matrix, self.points, self.box = photo, matrix, points, box
        return self

    @property
    def name(self):
        return self[0]

    @property
    def crop(self):
        return self[1]


# --------------------------------------------------------------------------- finding and framing faces

def parse_face_boxes(text):
    """'x,y,w,h' or 'x,y,w,h;x,y,w,h' -> [(x, y, w, h)] in pixels of the photo."""
    boxes = []
    for part in [p.strip() for p in text.replace(' ', '').split(';') if p.strip()]:
        vals = part.split(',')
        try:
            x, y, w, h = (int(round(float(v))) for v in vals)
        except ValueError:
            raise FlagError(f'--face_box: {part!r} is not x,y,w,h (four numbers, pixels of the photo)') from None
        if w <= 0 or h <= 0:
            raise FlagError(f'--face_box: {part!r}: width and height must be positive')
        boxes.append((x, y, w, h))
    if not boxes:
        raise FlagError('--face_box: no box given; use x,y,w,h (pixels), several separated by ";"')
    return boxes


def refine(pixels, points, framing, why='--detect_faces true'):
    """The five landmarks measured again in an upright crop of the face (REFINE_CONTEXT times the
    framing, REFINE_SIDE px): the detector is most precise on upright faces of that size. Returns
    the landmarks in photo pixels (the first ones when the second look finds no face there)."""
    expected = ((framing.array - 0.5) / REFINE_CONTEXT + 0.5) * REFINE_SIDE
    matrix = fr.similarity(points, expected)
    found = landmarks.detect(fr.warp_crop(pixels, matrix, REFINE_SIDE), why=why)
    if not found:
        return points
    best = min(found, key=lambda d: np.linalg.norm(d.points - expected, axis=1).mean())
    eyes = np.linalg.norm(expected[1] - expected[0])
    if np.linalg.norm(best.points - expected, axis=1).mean() > 0.5 * eyes:   # another face
        return points
    return fr.apply(fr.invert(matrix), best.points)


def find_faces(pixels, framing, size, why='--detect_faces true'):
    """[(Detection, matrix photo -> crop)] of every face in the photo, left to right."""
    out = []
    for det in landmarks.detect(pixels, why=why):
        points = det.points
        for _ in range(REFINE_PASSES):
            points = refine(pixels, points, framing, why)
        det.points = points
        out.append((det, fr.to_crop(points, framing, size)))
    return out


# --------------------------------------------------------------------------- test mode

def load_photo(path):
    """Any image file at full resolution -> (H, W, 3) uint8 RGB (EXIF rotation applied,
    transparency over white)."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ('RGBA', 'LA') or (im.mode == 'P' and 'transparency' in im.info):
                rgba = im.convert('RGBA')
                im = Image.new('RGB', rgba.size, (255, 255, 255))
                im.paste(rgba, mask=rgba.split()[3])
            else:
                im = im.convert('RGB')
            return np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise dl.DataError(path, 'image file not found') from None
    except Exception as e:
        raise dl.DataError(path, f'cannot read image: {e}') from None


def _flag(cfg, name, default):
    return getattr(cfg, name, default)


def photo_mode(cfg):
    """Whether test mode treats --test_images_dir as photos (detect or --face_box)."""
    detect = str(_flag(cfg, 'detect_faces', 'false')).lower()
    if detect not in ('true', 'false'):
        raise FlagError(f'--detect_faces: {detect!r}; use true or false')
    return detect == 'true' or bool(_flag(cfg, 'face_box', ''))


def image_files(path, flag='--test_images_dir'):
    """Image files of a folder (sorted), or the one file `path`; `flag`: what named it, for the errors."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise MissingInput(f'{flag} {path}: no such file or folder; expected one image, or a folder of images')
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(dl.IMAGE_EXTENSIONS))
    if not files:
        raise MissingInput(f'{flag} {path}: no image files ({", ".join(dl.IMAGE_EXTENSIONS)})')
    return [os.path.join(path, f) for f in files]


def photo_faces(cfg, size, framing):
    """[Face] of every face in the --test_images_dir photos: found by the detector (--detect_faces
    true) and cut out with `framing` (a framing.Framing), or given by --face_box, with --face_margin."""
    margin = float(_flag(cfg, 'face_margin', DEFAULT_MARGIN))
    if not 0 <= margin <= 2:
        raise FlagError(f'--face_margin {margin:g}: use a value in [0, 2] (crop side = box * (1 + 2 * margin))')
    boxes_given = parse_face_boxes(cfg.face_box) if _flag(cfg, 'face_box', '') else None
    if boxes_given is None:
        landmarks._session('--detect_faces true')   # say what to install before reading anything
    out = []
    for path in image_files(cfg.test_images_dir):
        pixels = load_photo(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        photo = Photo(stem, path, pixels)
        h, w = pixels.shape[:2]
        if boxes_given is not None:
            for x, y, bw, bh in boxes_given:
                if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
                    raise dl.DataError(path, f'--face_box {x},{y},{bw},{bh} lies outside the {w}x{h} photo')
            found = [(b, None, fr.box_matrix(b, margin, size)) for b in boxes_given]
        else:
            found = [(d.box, d.points, m) for d, m in find_faces(pixels, framing, size)]
            if not found:
                raise dl.DataError(path, 'no face found by the detector (RetinaFace, faces from about 16 px); '
                                         'give the box by hand with --face_box x,y,w,h')
        for k, (box, points, matrix) in enumerate(found, 1):
            out.append(Face(f'{stem}_face{k}', fr.warp_crop(pixels, matrix, size), photo, matrix, points, box))
        how = (f'given by --face_box (crop margin {margin:g})' if boxes_given else
               f'found, framed as {framing.name} ({framing.source})')
        print(f'{path}: {len(found)} face(s) {how}: ' + '; '.join(
            f'{_describe(m, size)}' for _, _, m in found))
    return out


def _describe(matrix, size):
    centre = fr.apply(fr.invert(matrix), [[size / 2, size / 2]])[0]
    return (f'centre {centre[0]:.0f},{centre[1]:.0f} side {size / fr.scale_of(matrix):.0f} px'
            + (f' turned {fr.angle_of(matrix):+.0f} deg' if abs(fr.angle_of(matrix)) >= 1 else ''))


def note_unaligned(path, size):
    """A hint when an image given as an aligned crop looks like a photo."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:
        return   # load_image names the file and the problem
    if abs(w - h) > 0.1 * max(w, h) or min(w, h) > 4 * size:
        print(f'note: {path} is {w}x{h}, not a square face crop; it is used whole. For a photo, add '
              f'--detect_faces true (or --face_box x,y,w,h) to crop the face with the training framing')


def photos_of(faces):
    """OrderedDict photo name -> (Photo, [indices into faces]) of the faces cut from photos."""
    groups = OrderedDict()
    for i, f in enumerate(faces):
        photo = getattr(f, 'photo', None)
        if photo is not None:
            groups.setdefault(photo.name, (photo, []))[1].append(i)
    return groups


def composite(faces, indices, edited):
    """The photo of faces[indices] with each face replaced by edited[i] (crops at model size)."""
    photo = faces[indices[0]].photo
    return fr.paste(photo.pixels, [(faces[i].matrix, faces[i].crop, edited[i]) for i in indices])


def save_stills(faces, edited, out_dir, suffix):
    """Every photo with all its faces edited: `<photo><suffix>.png` at full resolution,
    plus `<photo>_faces.png` (each crop's outline in green, its landmarks in red). Returns paths."""
    from utils import visualize as vis
    paths = []
    for name, (photo, idx) in photos_of(faces).items():
        paths.append(vis.save_png(composite(faces, idx, edited), os.path.join(out_dir, f'{name}{suffix}.png')))
        boxes_png = os.path.join(out_dir, f'{name}_faces.png')
        if not os.path.exists(boxes_png):
            vis.save_png(draw_faces(photo.pixels, [faces[i] for i in idx]), boxes_png)
    return paths


def draw_faces(pixels, faces):
    """The photo with each face's crop outline (green, the top edge thicker) and landmarks (red)."""
    im = Image.fromarray(pixels)
    d = ImageDraw.Draw(im)
    lw = max(1, min(im.size) // 250)
    for f in faces:
        size = f.crop.shape[0]
        corners = [tuple(c) for c in fr.outline(f.matrix, size)]
        d.line(corners + corners[:1], fill=(0, 200, 0), width=lw)
        d.line(corners[:2], fill=(0, 200, 0), width=3 * lw)
        for x, y in (f.points if f.points is not None else []):
            d.ellipse([x - 2 * lw, y - 2 * lw, x + 2 * lw, y + 2 * lw], fill=(230, 0, 0))
        d.text((corners[0][0] + 2 * lw, corners[0][1] + 3 * lw), f.name, fill=(0, 200, 0))
    return np.asarray(im)


def fit_within(frame, max_side):
    """The frame scaled down (never up) so its longer side is at most max_side."""
    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame
    k = max_side / max(h, w)
    return np.asarray(Image.fromarray(frame).resize((max(1, round(w * k)), max(1, round(h * k))), Image.LANCZOS))


def side_by_side(left, right):
    """left | right with left scaled to right's height."""
    h = right.shape[0]
    if left.shape[0] != h:
        w = max(1, round(left.shape[1] * h / left.shape[0]))
        left = np.asarray(Image.fromarray(left).resize((w, h), Image.BICUBIC))
    return np.concatenate([left, right], 1)


def animated_photos(faces, frames, refs=None, max_side=ANIMATION_MAX_SIDE):
    """Yield (photo name, [frames of the whole photo], [reference | photo frames] or None).

    frames: per face a (T, S, S, 3) uint8 array; every face of a photo moves together.
    refs: (T, s, s, 3) reference frames or None. Photos are scaled to `max_side`."""
    for name, (photo, idx) in photos_of(faces).items():
        out, sbs = [], []
        for t in range(len(frames[idx[0]])):
            full = fit_within(composite(faces, idx, {i: frames[i][t] for i in idx}), max_side)
            out.append(full)
            if refs is not None:
                sbs.append(side_by_side(refs[t], full))
        yield name, out, (sbs if refs is not None else None)


# --------------------------------------------------------------------------- calibration

def calibrate(image_dir, limit=200):
    """The framing of a folder of aligned training crops: the detector on each (brought to
    CALIBRATION_SIDE px), the median of the landmarks of the crops with one face, in crop sides,
    made left-right symmetric (framing.symmetric).
    Returns dict(framing, faces, images, spread: per landmark, the median distance to the median
    in crop sides)."""
    files = image_files(image_dir, '--calibrate')[:limit]
    rows = []
    for path in files:
        pixels = load_photo(path)
        h, w = pixels.shape[:2]
        if max(h, w) != CALIBRATION_SIDE:
            k = CALIBRATION_SIDE / max(h, w)
            pixels = np.asarray(Image.fromarray(pixels).resize((round(w * k), round(h * k)),
                                                               Image.BICUBIC if k > 1 else Image.LANCZOS))
        found = landmarks.detect(pixels, why='--calibrate')
        if len(found) == 1:
            rows.append(found[0].points / [pixels.shape[1], pixels.shape[0]])
    if not rows:
        raise FlagError(f'--calibrate {image_dir}: the detector found no single face in {len(files)} image(s)')
    rows = np.asarray(rows)
    median = fr.symmetric(np.median(rows, 0))
    spread = np.median(np.linalg.norm(rows - median, axis=-1), 0)
    framing = fr.Framing('measured', fr.as_points(median), f'measured on {len(rows)} crops of {image_dir}')
    return dict(framing=framing, faces=len(rows), images=len(files), spread=spread)


def framing_of_flag(spec):
    """--face_framing's value as a Framing: a folder of aligned crops is measured (calibrate), anything
    else read by framing.framing_from."""
    return calibrate(spec)['framing'] if os.path.isdir(str(spec)) else fr.framing_from(spec)


@command
def main(argv=None):
    p = argparse.ArgumentParser(description='Faces in photos: measure the framing of training crops, '
                                            'or show the faces found in photos.')
    p.add_argument('--calibrate', metavar='DIR', help='aligned training crops: print their framing')
    p.add_argument('--write', metavar='FILE', help='with --calibrate: save the framing for --face_framing FILE')
    p.add_argument('--detect', metavar='PHOTO', nargs='+', help='print the faces and landmarks found in photos')
    p.add_argument('--face_framing', default='box', help=f'framing for --detect: {fr.DESCRIPTION}')
    a = p.parse_args(argv)
    if a.calibrate:
        c = calibrate(a.calibrate)
        print(f'{a.calibrate}: {c["faces"]} of {c["images"]} crops with one face; landmarks (x, y in crop '
              'sides; median distance to the median in brackets):')
        for name, (x, y), s in zip(landmarks.POINT_NAMES, c['framing'].array, c['spread']):
            print(f'  {name:<19} {x:.4f} {y:.4f}  ({s:.4f})')
        print(f'--face_framing {c["framing"].spec()}')
        if a.write:
            print(f'written to {fr.write_framing(c["framing"], a.write)}: train or test with --face_framing {a.write}')
    framing = framing_of_flag(a.face_framing)
    for path in a.detect or []:
        found = find_faces(load_photo(path), framing, 128, why='--detect')
        print(f'{path}: ' + ('; '.join(
            f'face at {_describe(m, 128)}, landmarks ' +
            ' '.join(f'{x:.1f},{y:.1f}' for x, y in d.points) for d, m in found) or 'no face found'))
    if not a.calibrate and not a.detect:
        p.print_help()


if __name__ == '__main__':
    sys.exit(main())
