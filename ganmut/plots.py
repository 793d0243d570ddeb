"""Pictures of GANmut's emotion space (PIL only, no matplotlib).

- `plane_plot`: the plane of codes with the learned axes (linear) or the
  gaussians' 1-std ellipses (gaussian), labelled with the emotion names;
- `plane_map`: faces generated on a grid of codes over [-1, 1]^2 beside that plot;
- `strength_grid`: for each emotion a row of faces at increasing strength;

Codes of more than two dimensions are drawn in their first two (the plane z = 0).
"""
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from utils import visualize as vis

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127)]
NEUTRAL_COLOUR = (0, 0, 0)


def emotion_colour(i, neutral_index=0):
    if i == neutral_index:
        return NEUTRAL_COLOUR
    return PALETTE[(i - (1 if neutral_index is not None and i > neutral_index else 0)) % len(PALETTE)]


# --------------------------------------------------------------------------- the plane

def plane_codes(n, dim=2):
    """(n * n, dim) codes on an n x n grid over [-1, 1]^2, row by row from the top (y = +1)
    and left to right (x = -1 .. 1); further dimensions are 0."""
    ticks = torch.linspace(-1, 1, n)
    ys, xs = torch.meshgrid(ticks.flip(0), ticks, indexing='ij')
    codes = torch.zeros(n * n, dim)
    codes[:, 0], codes[:, 1] = xs.reshape(-1), ys.reshape(-1)
    return codes


@torch.no_grad()
def space_geometry(space):
    """What the plot draws, as numpy: names, neutral index, and 'axes' (linear) or
    'means' / 'covariances' (gaussian), in the first two dimensions."""
    geo = {'names': list(space.names), 'neutral': space.neutral_index, 'dim': space.dim}
    if hasattr(space, 'axes'):
        geo['kind'], geo['axes'] = 'linear', space.axes().detach().float().cpu().numpy()[:, :2]
    else:
        geo['kind'] = 'gaussian'
        geo['means'] = space.means().detach().float().cpu().numpy()[:, :2]
        geo['covariances'] = space.covariances().detach().float().cpu().numpy()[:, :2, :2]
    return geo


def plane_frame(size, title=''):
    """(left, top, side) in pixels of the square of codes in plane_plot's picture of `size`."""
    top = max(16, size // 14) if title else max(8, size // 30)
    left, bottom, right = max(18, size // 14), max(16, size // 16), max(8, size // 30)
    return left, top, min(size - left - right, size - top - bottom)


def plane_pixel(size, x, y, title='', lim=1.2):
    """The pixel of code (x, y) in plane_plot's picture (the same size, title and lim)."""
    left, top, side = plane_frame(size, title)
    return left + (x + lim) / (2 * lim) * side, top + (lim - y) / (2 * lim) * side


def plane_point(size, px, py, title='', lim=1.2):
    """The code (x, y) under pixel (px, py) of plane_plot's picture: the inverse of plane_pixel."""
    left, top, side = plane_frame(size, title)
    return (px - left) / side * 2 * lim - lim, lim - (py - top) / side * 2 * lim


def plane_plot(space, size=320, title='', grid_n=None, lim=1.2):
    """(size, size, 3) uint8: the plane of codes with the learned axes or gaussian
    1-std ellipses, each labelled with its emotion's name. `grid_n` draws the grid of a
    plane map's codes."""
    geo = space_geometry(space)
    img = Image.new('RGB', (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    small, big = vis.font(max(9, size // 32)), vis.font(max(10, size // 26))
    left, top, side = plane_frame(size, title)

    def px(x, y):
        return plane_pixel(size, x, y, title, lim)

    if title:
        vis.place_text(d, (size / 2, top / 2), title, big)
    lw = max(1, size // 200)
    d.rectangle([px(-1, 1), px(1, -1)], outline=(180, 180, 180), width=1)
    if grid_n:
        for t in np.linspace(-1, 1, grid_n):
            d.line([px(t, -1), px(t, 1)], fill=(232, 232, 232))
            d.line([px(-1, t), px(1, t)], fill=(232, 232, 232))
    d.line([px(-lim, 0), px(lim, 0)], fill=(150, 150, 150))
    d.line([px(0, -lim), px(0, lim)], fill=(150, 150, 150))
    for t in (-1, 0, 1):
        vis.place_text(d, (px(t, -lim)[0], top + side + 2), f'{t:g}', small, (90, 90, 90), 'mt')
        vis.place_text(d, (left - 3, px(0, t)[1]), f'{t:g}', small, (90, 90, 90), 'rm')
    vis.place_text(d, (px(lim, 0)[0], px(0, 0)[1] - 2), 'x', small, (90, 90, 90), 'rb')
    vis.place_text(d, (px(0, lim)[0] + 3, px(0, lim)[1]), 'y', small, (90, 90, 90), 'lt')
    names, neutral = geo['names'], geo['neutral']
    r = max(2, size // 110)
    taken = []   # label boxes, so that labels of nearby axes or means do not overlap
    if geo['kind'] == 'linear':
        circle = [px(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 97)]
        for k in range(0, 96, 2):   # dotted unit circle: full strength
            d.line([circle[k], circle[k + 1]], fill=(170, 170, 170))
        for i, name in enumerate(names):
            if i == neutral:
                continue
            ax, ay = geo['axes'][i]
            colour = emotion_colour(i, neutral)
            d.line([px(0, 0), px(ax, ay)], fill=colour, width=lw + 1)
            tx, ty = px(ax, ay)
            d.ellipse([tx - r, ty - r, tx + r, ty + r], fill=colour)
            norm = math.hypot(ax, ay) or 1.0
            # the label just past the axis's end, on the side away from the origin (never over its own line)
            anchor = ('r' if ax < -0.3 * norm else 'l' if ax > 0.3 * norm else 'm') + \
                     ('b' if ay > 0.3 * norm else 't' if ay < -0.3 * norm else 'm')
            vis.place_text(d, px(ax + 0.05 * ax / norm, ay + 0.05 * ay / norm), name, small, colour, anchor,
                           avoid=taken)
        if neutral is not None:
            ox, oy = px(0, 0)
            d.ellipse([ox - r, oy - r, ox + r, oy + r], fill=NEUTRAL_COLOUR)
            vis.place_text(d, (ox + 3, oy + 3), names[neutral], small, NEUTRAL_COLOUR, 'lt', avoid=taken)
    else:
        ts = np.linspace(0, 2 * math.pi, 73)
        unit = np.stack([np.cos(ts), np.sin(ts)])
        for i, name in enumerate(names):
            mu, cov = geo['means'][i], geo['covariances'][i]
            vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
            pts = (vecs @ np.diag(np.sqrt(np.clip(vals, 0, None))) @ unit).T + mu
            colour = emotion_colour(i, neutral)
            poly = [px(float(a), float(b)) for a, b in np.clip(pts, -lim, lim)]
            d.line(poly, fill=colour, width=lw)
            mx, my = px(float(mu[0]), float(mu[1]))
            d.ellipse([mx - r, my - r, mx + r, my + r], fill=colour)
            vis.place_text(d, (mx, my - r - 1), name, small, colour, 'mb', avoid=taken)
    return np.asarray(img)


def plane_map(faces, n, space, title='', cell=None):
    """faces: (n * n, H, W, 3) uint8 generated at plane_codes(n) -> the face grid, with its
    x / y values on the edges, beside plane_plot of the same height."""
    h = faces.shape[1]
    cell = cell or h
    rows = [[faces[r * n + c] for c in range(n)] for r in range(n)]
    grid = vis.grid(rows, pad=1)
    ticks = np.linspace(-1, 1, n)
    fsize = max(8, min(20, h // 5))
    tick_h = max(12, fsize + 4)
    xs = [vis.text_cell(f'{t:+.2f}', h + 1, tick_h, fsize) for t in ticks]
    top = vis.stack([np.full((tick_h, 1, 3), 255, np.uint8)] + xs, axis=1)
    ys = [vis.text_cell(f'{t:+.2f}', 4 * fsize, h + 1, fsize) for t in ticks[::-1]]
    side = vis.stack(ys + [np.full((1, 4 * fsize, 3), 255, np.uint8)], axis=0)
    face_part = vis.stack([np.full((tick_h, side.shape[1], 3), 255, np.uint8), side], axis=0)
    face_part = vis.stack([face_part, vis.stack([top, grid], axis=0)], axis=1)
    caption = vis.text_cell('faces at codes (x, y)', face_part.shape[1], tick_h + 4, fsize + 1)
    face_part = vis.stack([caption, face_part], axis=0)
    plot = plane_plot(space, face_part.shape[0], title, grid_n=n)
    gap = np.full((face_part.shape[0], 8, 3), 255, np.uint8)
    return vis.stack([face_part, gap, plot], axis=1)


def strength_grid(inputs, outputs, masks, names, strengths, references=None):
    """For each emotion a row: name | per face: input, outputs at `strengths`, (mask at the
    strongest) | (reference rendering of the emotion).

    inputs: list of (H, W, 3) uint8 per face; outputs[f]: (E, S, H, W, 3); masks[f]: (E, H, W, 3) or None.
    """
    h = inputs[0].shape[0]
    label_w = max(h, 64)
    rows = []
    for e, name in enumerate(names):
        row = []
        for f, x in enumerate(inputs):
            row += [x] + [outputs[f][e, s] for s in range(len(strengths))]
            if masks[f] is not None:
                row.append(masks[f][e])
        if references is not None:
            row.append(references[e])
        rows.append(row)
    body = vis.grid(rows)
    per_face = ['input'] + [f's={s:g}' for s in strengths] + (['A s=1'] if masks[0] is not None else [])
    titles = per_face * len(inputs) + ([('reference' if h >= 48 else 'ref.')] if references is not None else [])
    header = vis.label_row(titles, h, size=max(8, min(12, h // 4)))
    labels = vis.stack([np.full((header.shape[0] + 2, label_w, 3), 255, np.uint8)]
                   + [vis.text_cell(n, label_w, h + 2, max(9, min(13, h // 3))) for n in names], axis=0)
    return vis.stack([labels, vis.stack([header, body], axis=0)], axis=1)
