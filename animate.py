"""Test mode: animate faces along an AU sequence, or edit them to explicit AUs.

    python main.py --mode test --test_images_dir faces/ --test_attributes_path seq.txt
    python main.py --mode test --target_aus "AU12=4,AU25=2"

Frames go through the generator in batches. Without test flags the held-out
synthetic faces and a built-in AU sequence are used.
"""
import os

import numpy as np
import torch

import checkpoint
import data_loader as dl
import synthetic_faces as sf
import visualize as vis
from model import Discriminator, Generator
from solver import images_to_float, resolve_amp, resolve_device


def load_models(models_dir, device):
    """G and D of the newest checkpoint, built from the checkpoint's own config."""
    path = checkpoint.find(models_dir, 'latest')
    ckpt = checkpoint.load(path)
    c = ckpt['config']
    names = list(ckpt['label_names'])
    G = Generator(c['g_conv_dim'], len(names), c['g_repeat_num'], upsample=c.get('g_upsample', 'transposed'))
    D = Discriminator(c['image_size'], c['d_conv_dim'], len(names), c['d_repeat_num'],
                      label_trunk=c.get('d_label_trunk', 'shared'))
    checkpoint.check_state_dict(G, ckpt['G'], 'G', path)
    checkpoint.check_state_dict(D, ckpt['D'], 'D', path)
    G.load_state_dict(ckpt['G'])
    D.load_state_dict(ckpt['D'])
    return G.to(device).eval(), D.to(device).eval(), c, names, path


def parse_target_aus(text, label_names):
    """'AU12=4,AU25=2' -> {column index: intensity 0-5}. Errors name the bad part."""
    out = {}
    for part in [p.strip() for p in text.split(',') if p.strip()]:
        if '=' not in part:
            raise ValueError(f'--target_aus: {part!r} is not of the form AU12=4')
        name, value = (s.strip() for s in part.split('=', 1))
        try:
            idx = dl.select_aus([name], label_names)[0]
        except ValueError:
            raise ValueError(f'--target_aus: {name!r} is not one of the model\'s AUs: '
                             f'{" ".join(label_names)}') from None
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f'--target_aus: the intensity of {name} is not a number: {value!r}') from None
        if not 0 <= v <= 5:
            raise ValueError(f'--target_aus: {name}={v:g} is outside the intensity range [0, 5]')
        out[idx] = v
    if not out:
        raise ValueError('--target_aus: no AU given; use e.g. "AU12=4,AU25=2"')
    return out


def demo_sequence(frames_between=6):
    """Built-in AU sequence: neutral -> happy -> surprise -> sad -> anger -> disgust -> neutral."""
    keys = [np.zeros(sf.NUM_AUS)] + [sf.emotion_prototype(e, 4.5) for e in
                                     ('happy', 'surprise', 'sad', 'anger', 'disgust')] + [np.zeros(sf.NUM_AUS)]
    return interpolate_keyframes(np.stack(keys), frames_between)


def interpolate_keyframes(keys, n_between):
    """Linear interpolation with `n_between` frames between consecutive keyframes."""
    out = []
    for a, b in zip(keys[:-1], keys[1:]):
        for t in np.arange(n_between + 1) / (n_between + 1):
            out.append(a * (1 - t) + b * t)
    out.append(keys[-1])
    return np.stack(out)


@torch.no_grad()
def generate(G, x, conds, device, amp_dtype, batch_size=64):
    """x: (3, H, W) one face; conds: (T, c_dim) in [0, 1] -> (T, H, W, 3) uint8 frames and masks."""
    frames, masks = [], []
    for s in range(0, conds.shape[0], batch_size):
        c = conds[s:s + batch_size].to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            y, attn, _ = G(x.unsqueeze(0).expand(c.shape[0], -1, -1, -1), c)
        frames.append(vis.to_uint8(y))
        masks.append(vis.to_uint8(attn * 2 - 1) if attn is not None else None)
    return np.concatenate(frames), (np.concatenate(masks) if masks[0] is not None else None)


def _faces(cfg, ckpt_cfg, size):
    """[(name, (H, W, 3) uint8)] of the faces to animate."""
    if cfg.test_images_dir:
        files = sorted(f for f in os.listdir(cfg.test_images_dir) if f.lower().endswith(dl.IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f'--test_images_dir {cfg.test_images_dir}: no image files '
                                    f'({", ".join(dl.IMAGE_EXTENSIONS)})')
        return [(os.path.splitext(f)[0], dl.load_image(os.path.join(cfg.test_images_dir, f), size)) for f in files]
    image_dir, attr_path = ckpt_cfg.get('image_dir'), ckpt_cfg.get('attr_path')
    if not image_dir or not attr_path or not os.path.exists(attr_path):
        raise FileNotFoundError('test mode needs --test_images_dir: the training data of this checkpoint '
                                f'({attr_path}) is not available')
    ds = dl.au_dataset(image_dir, attr_path, size, split='test')
    n = min(cfg.test_num_faces, len(ds))
    return [(os.path.splitext(ds.files[i])[0], ds.load_uint8(i)) for i in range(n)]


def _sequence(cfg, label_names, size):
    """(AU sequence (T, 17 or c_dim) in 0-5 over the model's columns, reference frames or None)."""
    if cfg.test_attributes_path:
        names, au_names, values = dl.read_au_table(cfg.test_attributes_path)
        cols = dl.select_aus(label_names, au_names)
        ref_dir = cfg.test_reference_dir or os.path.dirname(os.path.abspath(cfg.test_attributes_path))
        refs = None
        paths = [os.path.join(ref_dir, n) for n in names]
        if all(os.path.exists(p) for p in paths):
            refs = np.stack([dl.load_image(p, size) for p in paths])
        return values[:, cols], refs
    seq = demo_sequence()
    ref_ident = sf.sample_identity(424242)
    refs = np.stack([sf.render(ref_ident, a, size) for a in seq])
    cols = [sf.AU_INDEX[n] for n in label_names]
    return seq[:, cols], refs


def _subsample(n, most):
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int))


def run(cfg):
    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    models_dir = cfg.test_models_dir or os.path.join(cfg.outputs_dir, 'models')
    out_dir = cfg.test_results_dir or os.path.join(cfg.outputs_dir, 'results')
    G, D, ckpt_cfg, label_names, path = load_models(models_dir, device)
    size = ckpt_cfg['image_size']
    faces = _faces(cfg, ckpt_cfg, size)
    print(f'test mode: {len(faces)} face(s), model {path}')
    os.makedirs(out_dir, exist_ok=True)
    x_all = images_to_float(torch.from_numpy(np.stack([f for _, f in faces])), device, torch.contiguous_format)
    if cfg.target_aus:
        return edit(cfg, G, D, x_all, faces, label_names, out_dir, device, amp)

    seq, refs = _sequence(cfg, label_names, size)
    conds = torch.from_numpy(seq / 5.0).float()
    cols = _subsample(len(seq), cfg.grid_columns)
    rows = [[refs[j] for j in cols]] if refs is not None else []
    all_frames = []
    for (name, _), x in zip(faces, x_all):
        frames, _ = generate(G, x, conds, device, amp, cfg.test_batch_size)
        face_dir = os.path.join(out_dir, name)
        for t, f in enumerate(frames):
            vis.save_png(f, os.path.join(face_dir, f'frame_{t:04d}.png'))
        vis.save_gif(list(frames), os.path.join(out_dir, f'{name}.gif'), cfg.fps)
        rows.append([frames[j] for j in cols])
        all_frames.append(frames)
    grid_path = vis.save_png(vis.grid(rows), os.path.join(out_dir, 'grid.png'))
    # one GIF with every face side by side (and the reference on the left)
    strips = ([refs] if refs is not None else []) + all_frames
    vis.save_gif([np.concatenate([s[t] for s in strips], 1) for t in range(len(seq))],
                 os.path.join(out_dir, 'all_faces.gif'), cfg.fps)
    np.savetxt(os.path.join(out_dir, 'au_sequence.txt'), seq, fmt='%.2f', header=' '.join(label_names))
    print(f'wrote {len(faces)} GIF(s) of {len(seq)} frames to {out_dir}/, grid: {grid_path}, '
          f'all faces: {os.path.join(out_dir, "all_faces.gif")}')
    return grid_path


@torch.no_grad()
def edit(cfg, G, D, x_all, faces, label_names, out_dir, device, amp):
    """Start from each face's own AUs (read by the critic's AU head), set the given ones."""
    targets = parse_target_aus(cfg.target_aus, label_names)
    _, own, _ = D(x_all)
    own = own.float().clamp(0, 1) * 5
    cond = own.clone()
    for idx, v in targets.items():
        cond[:, idx] = v
    rows = []
    for (name, img), x, c in zip(faces, x_all, cond):
        frames, masks = generate(G, x, (c / 5).unsqueeze(0), device, amp)
        vis.save_png(frames[0], os.path.join(out_dir, f'{name}_edited.png'))
        rows.append([img, frames[0]] + ([masks[0]] if masks is not None else []))
    path = vis.save_png(vis.grid(rows), os.path.join(out_dir, 'edits.png'))
    desc = ', '.join(f'{label_names[i]}={v:g}' for i, v in targets.items())
    print(f'edited {len(faces)} face(s) to {desc}: {out_dir}/*_edited.png, grid (input | edited | attention): {path}')
    return path
