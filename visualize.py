"""Image grids and GIFs with PIL and numpy (no torchvision)."""
import os

import numpy as np
import torch
from PIL import Image, ImageDraw


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


def label_strip(labels, cell_w, height=14, pad=2):
    """A white strip with a text label above each column."""
    out = Image.new('RGB', (len(labels) * (cell_w + pad) + pad, height), (255, 255, 255))
    d = ImageDraw.Draw(out)
    for j, text in enumerate(labels):
        d.text((pad + j * (cell_w + pad) + 2, 1), text, fill=(0, 0, 0))
    return np.asarray(out)
