"""Faces in photos: detection, crops with the training framing, feathered paste-back.

Test mode edits aligned face crops. A photo that is not such a crop is handled here:

1. find the faces: OpenCV's Haar cascade `haarcascade_frontalface_default.xml`, whose
   weights ship inside the `opencv-python-headless` wheel (an optional dependency,
   requirements-extras.txt), or boxes given by hand (`--face_box x,y,w,h`);
2. crop each face with the framing the model was trained on: a square centred on the face
   box, of side `box * (1 + 2 * margin)` (`--face_margin`, default 0.15), resized to the
   model's size. The default was measured, not guessed: on the synthetic faces the same
   detector's box covers 0.77 of the crop side (median over 46 faces at 128 px, 0.80 at
   256 px) and is centred within 1 % of the side, so crop = box / 0.77 = box * 1.3.
   For a model trained on other crops (CelebA or OpenFace's aligned faces), measure it:
   `python -m editing.photos --calibrate data/celeba/images` prints the margin that matches;
3. paste each edit back into the full-resolution photo. The edited crop is resized to
   the crop box, and the photo's own fine detail (photo - resized input crop) is added
   back where the model changed little: fully where the change is 0, not at all where
   it reaches `DETAIL_TAU` grey levels (so an opened mouth shows the model's mouth, not
   a ghost of the old lips, and an unchanged cheek keeps the photo's resolution). The
   result is blended in with a feathered weight (1 inside, falling smoothly to 0 over the
   outer `FEATHER` of the box): no pixel outside the crop boxes changes at all, and
   where the boxes of a group photo overlap, the changes are averaged by their weights.

Without OpenCV, aligned crops and `--face_box` still work; asking for detection says what
to install.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

import data_loader as dl
from utils.errors import FlagError, MissingInput, UserError

DEFAULT_MARGIN = 0.15      # crop side = detector box * (1 + 2 * margin), see the module docstring
FEATHER = 0.12             # share of the crop side over which the pasted change fades out
DETAIL_TAU = 24.0          # change (grey levels, at the model's size) from which the photo's detail is dropped
ANIMATION_MAX_SIDE = 1024  # animated photos (GIF/MP4) are scaled down to this longer side; stills are not
CASCADE = 'haarcascade_frontalface_default.xml'
EXTRAS_HINT = ('pip install -r requirements-extras.txt (it installs opencv-python-headless<5, whose '
               'Haar cascades ship inside the wheel)')


class Photo:
    """A full-resolution photo that face crops were cut from."""

    def __init__(self, name, path, pixels):
        self.name, self.path, self.pixels = name, path, pixels

    @property
    def size(self):
        return self.pixels.shape[1], self.pixels.shape[0]


class Face(tuple):
    """(name, crop) as test mode unpacks it, plus where the crop came from.

    `photo` is None for an aligned crop; for a face found in a photo it is the Photo,
    `box` the face box (x, y, w, h) and `square` the crop box (x0, y0, side) in photo pixels
    (it may reach past the photo's border; those pixels are padded by edge replication)."""

    def __new__(cls, name, crop, photo=None, box=None, square=None):
        self = super().__new__(cls, (name, crop))
        self.photo, self.box, self.square = photo, box, square
        return self

    @property
    def name(self):
        return self[0]

    @property
    def crop(self):
        return self[1]


# --------------------------------------------------------------------------- detection

def have_detector():
    import importlib.util
    return importlib.util.find_spec('cv2') is not None


def _cv2(why):
    try:
        import cv2
    except ImportError:
        raise UserError(f'{why} needs OpenCV, an optional dependency: {EXTRAS_HINT}; '
                         f'or give the face box by hand with --face_box x,y,w,h') from None
    return cv2


_CASCADES = {}


def detect_faces(pixels, min_face=None, why='--detect_faces true'):
    """(H, W, 3) uint8 RGB -> face boxes [(x, y, w, h)], left to right.

    Haar cascade on the equalised grey image; `min_face`: smallest face side in pixels
    (default: 1/20 of the shorter image side, at least 24). Boxes mostly inside a larger
    box are dropped."""
    cv2 = _cv2(why)
    path = os.path.join(cv2.data.haarcascades, CASCADE)
    if path not in _CASCADES:
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise UserError(f'cannot load the face detector {path}; reinstall: {EXTRAS_HINT}')
        _CASCADES[path] = cascade
    grey = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY))
    side = min_face or max(24, min(pixels.shape[:2]) // 20)
    found = _CASCADES[path].detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    boxes = sorted((tuple(int(v) for v in b) for b in np.asarray(found).reshape(-1, 4)), key=lambda b: -b[2] * b[3])
    kept = []
    for b in boxes:   # largest first; drop boxes mostly covered by a kept one
        if all(_overlap(b, k) < 0.5 for k in kept):
            kept.append(b)
    return sorted(kept, key=lambda b: (b[0], b[1]))


def _overlap(a, b):
    """Intersection area over the area of the smaller box."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / max(1, min(a[2] * a[3], b[2] * b[3]))


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


# --------------------------------------------------------------------------- framing, crop, paste

def crop_square(box, margin=DEFAULT_MARGIN):
    """Face box (x, y, w, h) -> crop box (x0, y0, side): a square centred on the face box,
    of side max(w, h) * (1 + 2 * margin)."""
    x, y, w, h = box
    side = max(2, int(round(max(w, h) * (1 + 2 * margin))))
    cx, cy = x + w / 2, y + h / 2
    return int(round(cx - side / 2)), int(round(cy - side / 2)), side


def _clip(square, width, height):
    """Visible part of a crop box: photo slice bounds and crop slice bounds."""
    x0, y0, side = square
    px0, py0 = max(0, x0), max(0, y0)
    px1, py1 = min(width, x0 + side), min(height, y0 + side)
    if px1 <= px0 or py1 <= py0:
        return None
    return (py0, py1, px0, px1), (py0 - y0, py1 - y0, px0 - x0, px1 - x0)


def crop(pixels, square, size):
    """Cut the crop box out of the photo (edge pixels repeated past the border), resize to size."""
    h, w = pixels.shape[:2]
    x0, y0, side = square
    if _clip(square, w, h) is None:
        raise FlagError(f'--face_box: the crop box {square} lies outside the {w}x{h} photo')
    ys = np.clip(np.arange(y0, y0 + side), 0, h - 1)
    xs = np.clip(np.arange(x0, x0 + side), 0, w - 1)
    patch = pixels[ys][:, xs]
    im = Image.fromarray(np.ascontiguousarray(patch))
    if side != size:
        im = im.resize((size, size), Image.BICUBIC if side < size else Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8).copy()


def feather_weights(side, feather=FEATHER):
    """(side, side) float32: 1 in the middle, a smoothstep to 0 over the outer `feather`
    share of the side, exactly 0 on the border pixels."""
    band = max(1.0, feather * side)
    d = np.minimum(np.arange(side), np.arange(side)[::-1]).astype(np.float32)   # pixels to the nearest edge
    t = np.clip(d / band, 0, 1)
    ramp = t * t * (3 - 2 * t)
    return np.minimum(ramp[:, None], ramp[None, :])


def _resize_float(arr, side):
    """(S, S, C) float -> (side, side, C), bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    if t.shape[-1] != side:
        t = torch.nn.functional.interpolate(t, size=(side, side), mode='bilinear', align_corners=False,
                                            antialias=t.shape[-1] > side)
    return t[0].permute(1, 2, 0).numpy()


def paste(pixels, edits, feather=FEATHER):
    """Paste edited crops back into a photo.

    pixels: (H, W, 3) uint8; edits: [(square, input crop, edited crop)], crops (S, S, 3) uint8
    at the model's size. Returns a new (H, W, 3) uint8 photo; pixels outside every crop box,
    and pixels the feathered weight leaves at 0, are exactly those of `pixels`.

    In the box: edited crop (resized) + (1 - alpha) * the photo's detail, alpha = |change| /
    DETAIL_TAU clipped to [0, 1], i.e. the photo plus the resized change minus alpha * detail."""
    h, w = pixels.shape[:2]
    acc = np.zeros((h, w, 3), np.float32)
    wsum = np.zeros((h, w), np.float32)
    for square, before, after in edits:
        clip = _clip(square, w, h)
        if clip is None:
            continue
        (py0, py1, px0, px1), (cy0, cy1, cx0, cx1) = clip
        side = square[2]
        b, a = before.astype(np.float32), after.astype(np.float32)
        alpha = np.clip(np.abs(a - b).max(-1, keepdims=True) / DETAIL_TAU, 0, 1)
        up = _resize_float(np.concatenate([a - b, b, alpha], -1), side)[cy0:cy1, cx0:cx1]
        detail = pixels[py0:py1, px0:px1].astype(np.float32) - up[..., 3:6]
        change = up[..., :3] - up[..., 6:7] * detail
        weight = feather_weights(side, feather)
        acc[py0:py1, px0:px1] += weight[cy0:cy1, cx0:cx1, None] * change
        wsum[py0:py1, px0:px1] += weight[cy0:cy1, cx0:cx1]
    out = pixels.copy()
    touched = wsum > 0
    change = acc[touched] / np.maximum(wsum[touched], 1.0)[:, None]
    out[touched] = np.clip(np.round(pixels[touched].astype(np.float32) + change), 0, 255).astype(np.uint8)
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


def photo_faces(cfg, size):
    """[Face] of every face in the --test_images_dir photos: found by the detector
    (--detect_faces true) or given by --face_box, cropped with --face_margin."""
    margin = float(_flag(cfg, 'face_margin', DEFAULT_MARGIN))
    if not 0 <= margin <= 2:
        raise FlagError(f'--face_margin {margin:g}: use a value in [0, 2] (crop side = box * (1 + 2 * margin))')
    boxes_given = parse_face_boxes(cfg.face_box) if _flag(cfg, 'face_box', '') else None
    if boxes_given is None:
        _cv2('--detect_faces true')   # say what to install before reading anything
    out = []
    for path in image_files(cfg.test_images_dir):
        pixels = load_photo(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        photo = Photo(stem, path, pixels)
        if boxes_given is not None:
            boxes = boxes_given
            h, w = pixels.shape[:2]
            for x, y, bw, bh in boxes:
                if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
                    raise dl.DataError(path, f'--face_box {x},{y},{bw},{bh} lies outside the {w}x{h} photo')
        else:
            boxes = detect_faces(pixels)
            if not boxes:
                raise dl.DataError(path, 'no face found by the detector (OpenCV Haar cascade, frontal faces); '
                                         'give the box by hand with --face_box x,y,w,h')
        for k, b in enumerate(boxes, 1):
            square = crop_square(b, margin)
            out.append(Face(f'{stem}_face{k}', crop(pixels, square, size), photo, b, square))
        print(f'{path}: {len(boxes)} face(s) ' + ('given by --face_box' if boxes_given else 'found') + ': ' +
              '; '.join(f'{",".join(map(str, b))}' for b in boxes) + f' (x,y,w,h; crop margin {margin:g})')
    return out


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


def composite(faces, indices, edited, feather=FEATHER):
    """The photo of faces[indices] with each face replaced by edited[i] (crops at model size)."""
    photo = faces[indices[0]].photo
    return paste(photo.pixels, [(faces[i].square, faces[i].crop, edited[i]) for i in indices], feather)


def save_stills(faces, edited, out_dir, suffix):
    """Every photo with all its faces edited: `<photo><suffix>.png` at full resolution,
    plus `<photo>_faces.png` (the face boxes in red, the crop boxes in green). Returns paths."""
    from utils import visualize as vis
    paths = []
    for name, (photo, idx) in photos_of(faces).items():
        paths.append(vis.save_png(composite(faces, idx, edited), os.path.join(out_dir, f'{name}{suffix}.png')))
        boxes_png = os.path.join(out_dir, f'{name}_faces.png')
        if not os.path.exists(boxes_png):
            vis.save_png(draw_boxes(photo.pixels, [faces[i] for i in idx]), boxes_png)
    return paths


def draw_boxes(pixels, faces):
    im = Image.fromarray(pixels)
    d = ImageDraw.Draw(im)
    lw = max(1, min(im.size) // 200)
    for f in faces:
        x, y, w, h = f.box
        x0, y0, s = f.square
        d.rectangle([x0, y0, x0 + s - 1, y0 + s - 1], outline=(0, 200, 0), width=lw)
        d.rectangle([x, y, x + w - 1, y + h - 1], outline=(230, 0, 0), width=lw)
        d.text((x0 + 2 * lw, y0 + 2 * lw), f.name, fill=(0, 200, 0))
    return np.asarray(im)


def _fit(frame, max_side):
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
            full = _fit(composite(faces, idx, {i: frames[i][t] for i in idx}), max_side)
            out.append(full)
            if refs is not None:
                sbs.append(side_by_side(refs[t], full))
        yield name, out, (sbs if refs is not None else None)


# --------------------------------------------------------------------------- calibration

def calibrate(image_dir, limit=200):
    """Run the detector on training crops; the median box side (share of the crop side) and
    centre give the --face_margin that reproduces their framing."""
    files = image_files(image_dir, '--calibrate')[:limit]
    rows = []
    for path in files:
        pixels = load_photo(path)
        if max(pixels.shape[:2]) < 128:   # small crops: the detector's smallest window is 24 px
            k = 128 / max(pixels.shape[:2])
            pixels = np.asarray(Image.fromarray(pixels).resize(
                (round(pixels.shape[1] * k), round(pixels.shape[0] * k)), Image.BICUBIC))
        h, w = pixels.shape[:2]
        boxes = detect_faces(pixels, min_face=max(16, min(h, w) // 4), why='--calibrate')
        if len(boxes) == 1:
            x, y, bw, bh = boxes[0]
            rows.append((max(bw, bh) / max(h, w), (x + bw / 2) / w, (y + bh / 2) / h))
    if not rows:
        raise FlagError(f'--calibrate {image_dir}: the detector found no single face in {len(files)} image(s)')
    r = np.median(np.asarray(rows), 0)
    return dict(faces=len(rows), images=len(files), box_share=float(r[0]), centre_x=float(r[1]),
                centre_y=float(r[2]), margin=float((1 / r[0] - 1) / 2))


def main(argv=None):
    p = argparse.ArgumentParser(description='Face detection for test mode: calibrate the crop margin, '
                                            'or show the faces found in photos.')
    p.add_argument('--calibrate', metavar='DIR', help='training crops: print the --face_margin that matches them')
    p.add_argument('--detect', metavar='PHOTO', nargs='+', help='print the face boxes found in these photos')
    p.add_argument('--margin', type=float, default=DEFAULT_MARGIN, help='crop margin for --detect')
    a = p.parse_args(argv)
    try:
        if a.calibrate:
            c = calibrate(a.calibrate)
            print(f'{a.calibrate}: {c["faces"]} of {c["images"]} images with one face; the detector box covers '
                  f'{c["box_share"]:.2f} of the crop side, centre at ({c["centre_x"]:.2f}, {c["centre_y"]:.2f}) '
                  f'of the crop: use --face_margin {c["margin"]:.2f}')
        for path in a.detect or []:
            boxes = detect_faces(load_photo(path), why='--detect')
            print(f'{path}: ' + ('; '.join(f'face box {",".join(map(str, b))} crop box '
                                           f'{",".join(map(str, crop_square(b, a.margin)))}' for b in boxes)
                                 or 'no face found'))
        if not a.calibrate and not a.detect:
            p.print_help()
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
