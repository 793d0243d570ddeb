"""Image grids and GIFs with PIL and numpy (no torchvision)."""
import functools
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(x):
    """(B, C, H, W) or (C, H, W) tensor in [-1, 1] -> (..., H, W, 3) uint8; 1-channel is repeated."""
    x = x.detach().float().cpu()
    if x.shape[-3] == 1:
        x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def grid(rows, pad=2, pad_value=255):
    """rows: list of lists of (H, W, 3) uint8 arrays (None leaves a blank cell)."""
    h, w = next(c for r in rows for c in r if c is not None).shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), pad_value, np.uint8)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            if cell is not None:
                y, x = pad + i * (h + pad), pad + j * (w + pad)
                out[y:y + h, x:x + w] = cell
    return out


def save_png(arr, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def save_gif(frames, path, fps=10):
    """frames: list of (H, W, 3) uint8; loops forever."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=max(20, int(1000 / fps)), loop=0)
    return path


@functools.lru_cache(maxsize=16)
def font(size=11):
    """A scalable font of `size` px (Pillow's built-in one, with FreeType), else the bitmap default."""
    try:
        return ImageFont.load_default(size=max(8, int(size)))
    except (TypeError, ValueError, OSError, AttributeError):
        return ImageFont.load_default()


def place_text(draw, xy, text, fnt, fill=(0, 0, 0), anchor='mm', avoid=None):
    """Text placed by its bounding box: anchor m (centre), l (left) or r (right), then m / t / b,
    moved inside the image where it would stick out (a label at the plot's edge stays whole).
    `avoid`: a list of boxes already taken; the text moves down (then up) until it overlaps
    none of them, and its box is added."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=fnt)
    w, h = x1 - x0, y1 - y0
    x, y = xy
    x = x - w / 2 if anchor[0] == 'm' else (x - w if anchor[0] == 'r' else x)
    y = y - h / 2 if anchor[1] == 'm' else (y - h if anchor[1] == 'b' else y)
    width, height = draw.im.size
    x, y = min(max(x, 0), width - w), min(max(y, 0), height - h)
    if avoid is not None:
        def free(yy):
            return all(x + w < a[0] or x > a[2] or yy + h < a[1] or yy > a[3] for a in avoid)
        for k in range(12):
            shift = (k + 1) // 2 * (h + 2) * (1 if k % 2 else -1)
            if free(y + shift):
                y += shift
                break
        avoid.append((x - 1, y - 1, x + w + 1, y + h + 1))
    draw.text((x - x0, y - y0), text, font=fnt, fill=fill)


def text_cell(text, width, height, size=None, fill=(0, 0, 0), background=(255, 255, 255)):
    """(height, width, 3) uint8 with `text` centred (lines split at newlines)."""
    img = Image.new('RGB', (int(width), int(height)), background)
    d = ImageDraw.Draw(img)
    lines = str(text).split('\n')
    size = size or max(9, min(height // (len(lines) + 1), 14))
    fnt = font(size)
    while size > 7 and max(d.textbbox((0, 0), line, font=fnt)[2] for line in lines) > width - 2:
        size -= 1   # shrink to fit the cell
        fnt = font(size)
    line_h = d.textbbox((0, 0), 'Ag', font=fnt)[3] + 2
    top = height / 2 - line_h * (len(lines) - 1) / 2
    for k, line in enumerate(lines):
        place_text(d, (width / 2, top + k * line_h), line, fnt, fill)
    return np.asarray(img)


def label_row(labels, cell, height=None, pad=2, size=None):
    """A strip of text cells that sits above a vis.grid row of `len(labels)` cells."""
    height = height or max(14, cell // 4)
    cells = [[text_cell(t, cell, height, size) if t is not None else None for t in labels]]
    if all(c is None for c in cells[0]):
        return None
    h = height
    out = np.full((h + pad, len(labels) * (cell + pad) + pad, 3), 255, np.uint8)
    for j, c in enumerate(cells[0]):
        if c is not None:
            out[pad:pad + h, pad + j * (cell + pad):pad + j * (cell + pad) + cell] = c
    return out


def stack(parts, axis=0):
    """Concatenate uint8 images along `axis`, padding the other side with white."""
    parts = [p for p in parts if p is not None]
    other = 1 - axis
    size = max(p.shape[other] for p in parts)
    padded = []
    for p in parts:
        if p.shape[other] < size:
            shape = list(p.shape)
            shape[other] = size - p.shape[other]
            p = np.concatenate([p, np.full(shape, 255, np.uint8)], other)
        padded.append(p)
    return np.concatenate(padded, axis)


def titled_grid(titles, rows, cell, **label_kw):
    """vis.grid(rows) under a row of column titles (label_row's options in `label_kw`)."""
    return stack([label_row(titles, cell, **label_kw), grid(rows)])
