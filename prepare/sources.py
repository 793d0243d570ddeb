"""What --mode prepare reads: the photos and videos named by --source, and each photo read whatever its
format, or a reason why not (a rejected file is reported, never fatal).

A source is a folder (searched recursively), a photo or a video. Each gets a name for its crops that
keeps its file name: characters the label files cannot hold (spaces, commas, quotes, anything outside
printable ASCII letters, digits and `-_.`) become `_`, and two sources of the same name are told apart
by as many of their folders as it takes (`happy/img1.jpg`, `sad/img1.jpg` -> `happy_img1`, `sad_img1`).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from data_loader import IMAGE_EXTENSIONS
from editing.video import VIDEO_EXTENSIONS
from utils.errors import MissingInput

MAX_SIDE = 4096          # longer side a photo is read at; larger ones are scaled down (and it is said)
Image.MAX_IMAGE_PIXELS = None   # huge photos are scaled here, not refused by PIL as decompression bombs
UNSAFE = re.compile(r'[^A-Za-z0-9._-]')


@dataclass
class Source:
    """One photo or video: `path` on disk, `kind` 'photo' or 'video', `rel` its path below the --source
    folder it was found in (its file name for a file given directly), `name` its crops' name stem."""
    path: str
    kind: str
    rel: str
    name: str = ''


class Rejected(Exception):
    """A file or a face that is not used, with the reason the report gives."""


def find_sources(paths):
    """[Source] of every photo and video under `paths` (folders searched recursively, hidden entries
    left out), in a stable order, named by `name_sources`; and the other files found, [(path, reason)].
    A path that does not exist is an error naming it."""
    found, other = [], []
    for root in paths:
        if os.path.isfile(root):
            kind = kind_of(root)
            if kind is None:
                other.append((root, f'not a photo or video ({", ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})'))
            else:
                found.append(Source(root, kind, os.path.basename(root)))
            continue
        if not os.path.isdir(root):
            raise MissingInput(f'--source {root}: no such file or folder; expected a folder of photos, a photo or '
                               'a video')
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
            for f in sorted(files):
                if f.startswith('.'):
                    continue
                path = os.path.join(folder, f)
                kind = kind_of(path)
                if kind is None:
                    other.append((path, 'not a photo or video (by its extension)'))
                else:
                    found.append(Source(path, kind, os.path.relpath(path, root)))
    name_sources(found)
    return found, other


def kind_of(path):
    low = path.lower()
    return 'photo' if low.endswith(IMAGE_EXTENSIONS) else 'video' if low.endswith(VIDEO_EXTENSIONS) else None


def safe(text):
    return UNSAFE.sub('_', text)


def name_sources(sources):
    """Set each source's `name`: its file name without extension, made safe; where several sources
    share it, their folders are put in front, one more at a time, until the names differ."""
    parts = [[safe(p) for p in os.path.splitext(s.rel)[0].replace('\\', '/').split('/')] for s in sources]
    depth = [1] * len(sources)
    while True:
        names = ['_'.join(p[-d:]) for p, d in zip(parts, depth)]
        seen = {}
        for i, n in enumerate(names):
            seen.setdefault(n.lower(), []).append(i)     # case-insensitive: file systems that ignore case
        clashes = [group for group in seen.values() if len(group) > 1]
        if not clashes:
            break
        grew = False
        for group in clashes:
            for i in group:
                if depth[i] < len(parts[i]):
                    depth[i] += 1
                    grew = True
        if not grew:       # the same relative path under two --source folders: number them
            for group in clashes:
                for k, i in enumerate(group[1:], 2):
                    parts[i][-1] += f'_{k}'
    for s, n in zip(sources, names):
        s.name = n


def read_photo(path, max_side=MAX_SIDE):
    """(H, W, 3) uint8 RGB of a photo, upright (EXIF orientation applied), and a note on what was done
    to read it ('' when nothing: 'scaled down from 6000x4000', '16-bit', 'CMYK', 'transparency over
    white', ...). Raises Rejected with the reason the file cannot be used."""
    if os.path.getsize(path) == 0:
        raise Rejected('empty file')
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            warnings.simplefilter('ignore', UserWarning)      # e.g. corrupt EXIF data, which is only skipped
            with Image.open(path) as im:
                im.draft('RGB', (max_side, max_side))         # JPEG: decode at a reduced scale when huge
                im.load()
                im = ImageOps.exif_transpose(im)
                pixels = to_rgb(im, notes)
    except Rejected:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if 'cannot identify image file' in text:
            raise Rejected('not an image (the file is not in an image format PIL can read)') from None
        if 'truncated' in text.lower() or 'broken data stream' in text.lower():
            raise Rejected(f'truncated image ({text})') from None
        raise Rejected(f'unreadable image ({text})') from None
    h, w = pixels.shape[:2]
    if max(h, w) > max_side:
        k = max_side / max(h, w)
        pixels = np.asarray(Image.fromarray(pixels).resize((max(1, round(w * k)), max(1, round(h * k))),
                                                           Image.LANCZOS))
        notes.append(f'scaled down from {w}x{h}')
    return pixels, ', '.join(notes)


def to_rgb(im, notes):
    """A loaded PIL image of any mode -> (H, W, 3) uint8 RGB; `notes` gets what was converted."""
    mode = im.mode
    if mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I'):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith('I;16') or a.max() > 255 else 255.0
        grey = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        notes.append('16-bit grey' if top > 255 else 'integer grey')
        return np.repeat(grey[..., None], 3, 2)
    if mode == 'F':
        raise Rejected('a floating-point image (mode F), not a photo')
    if mode in ('RGBA', 'LA', 'PA') or (mode == 'P' and 'transparency' in im.info):
        rgba = im.convert('RGBA')
        flat = Image.new('RGB', rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.split()[3])
        notes.append('transparency over white')
        return np.array(flat, dtype=np.uint8)
    if mode == 'CMYK':
        notes.append('CMYK')
    elif mode in ('L', '1'):
        notes.append('grey')
    elif mode == 'P':
        notes.append('palette')
    elif mode not in ('RGB',):
        notes.append(mode)
    return np.array(im.convert('RGB'), dtype=np.uint8)
