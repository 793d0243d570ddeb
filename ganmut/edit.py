"""GANmut test mode: edit the emotion of faces.

    python main.py --mode test --model ganmut --theta 40 --rho 0.8          # a code in polar form (linear)
    python main.py --mode test --model ganmut --x 0.3 --y -0.5              # a point of the plane (gaussian)
    python main.py --mode test --model ganmut --emotion happy --intensity 0.7
    python main.py --mode test --model ganmut --emotion_wheel               # a GIF once around the plane
    python main.py --mode test --model ganmut                               # every emotion, plus the plane map

Faces: --test_images_dir (aligned crops, any size; or photos with --detect_faces true or
--face_box, whose faces are cropped, edited and pasted back: `<photo>_edited.png`,
`<photo>_<emotion>.png`, `<photo>_animated.gif`), else the held-out faces of the
checkpoint's data. Result folders follow GANimation's test mode (editing/animate.py):
`<face>_edited.png` and `edits.png` for an edit; `<face>/frame_0000.png ...`,
`<face>.gif`, `all_faces.gif` and `grid.png` for the wheel; `<face>/<emotion>.png`,
`grid.png` and `plane.png` without edit flags. The model comes from the
checkpoint's own config, so no model flags are needed.
"""
import json
import math
import os

import numpy as np
import torch

import data_loader as dl
from editing import photos as face_crops
from editing.animate import faces_to_edit, generate, save_animation, save_edits
from ganmut import plots as gv
from ganmut import solver as gs
from ganmut import space as ganmut
from solver import images_to_float
from utils import visualize as vis
from utils.errors import FlagError
from utils.records import mode_folder
from utils.runtime import resolve_device


def held_out_emotion_faces(image_dir, attr_path, size):
    """The held-out faces of emotion data (test.csv beside the training CSV), else its training faces."""
    return dl.emotion_dataset(image_dir, gs.held_out_csv(attr_path) or attr_path, size, 10 ** 6)


def edit_code(cfg, space):
    """(code (dim,), description) of the edit flags, or None when no edit is asked for."""
    polar = cfg.theta is not None or cfg.rho is not None
    point = cfg.x is not None or cfg.y is not None or cfg.z is not None
    named = cfg.emotion is not None
    if sum([polar, point, named]) > 1:
        raise FlagError('--theta/--rho, --x/--y and --emotion/--intensity are alternatives: give one kind of edit')
    if cfg.intensity is not None and not named:
        raise FlagError('--intensity goes with --emotion NAME')
    device = next(space.parameters()).device
    if named:
        intensity = 1.0 if cfg.intensity is None else cfg.intensity
        try:
            code = space.code_for(cfg.emotion, intensity)
        except ValueError as e:
            raise FlagError(f'--emotion: {e}') from None
        return code, f'{cfg.emotion} at intensity {intensity:g}'
    if polar:
        if space.dim != 2:
            raise FlagError(f'--theta/--rho need a 2-D space; this model\'s is {space.dim}-D: use --x --y --z')
        theta, rho = cfg.theta or 0.0, 1.0 if cfg.rho is None else cfg.rho
        t = math.radians(theta)
        code = torch.tensor([rho * math.cos(t), rho * math.sin(t)], device=device)
        return code, f'theta {theta:g} deg, rho {rho:g}'
    if point:
        if cfg.z is not None and space.dim < 3:
            raise FlagError('--z needs a 3-D space (--emotion_dim 3); this model\'s is 2-D')
        values = [cfg.x or 0.0, cfg.y or 0.0] + [cfg.z or 0.0] * (space.dim - 2)
        values += [0.0] * (space.dim - len(values))
        return torch.tensor(values, device=device), 'code (' + ', '.join(f'{v:g}' for v in values) + ')'
    return None


def nearest_emotion(space, codes):
    """Emotion index per code: the closest axis direction (linear; neutral near the origin) or
    the most likely gaussian."""
    with torch.no_grad():
        if isinstance(space, ganmut.LinearSpace):
            axes = space.axes()
            cos = torch.nn.functional.normalize(codes, dim=1) @ axes.T
            cos[:, space.neutral_index] = -2
            best = cos.argmax(1)
            return torch.where(codes.norm(dim=1) < 0.1, torch.full_like(best, space.neutral_index), best)
        return space.target_distribution(codes).argmax(1)


def wheel_codes(cfg, space, frames):
    """Codes once around the plane: angle theta_0 + 360 k / frames, radius --rho (default: 1 for a
    linear space, the mean distance of the emotions' means for a gaussian one), other dimensions 0."""
    with torch.no_grad():
        if cfg.rho is not None:
            rho = cfg.rho
        elif isinstance(space, ganmut.LinearSpace):
            rho = 1.0
        else:
            others = [i for i in range(space.num_emotions) if i != space.neutral_index]
            rho = float(space.means()[others, :2].norm(dim=1).mean().clamp(0.2, 1.0))
    start = math.radians(cfg.theta or 0.0)
    t = start + torch.arange(frames, dtype=torch.float32) * (2 * math.pi / frames)
    codes = torch.zeros(frames, space.dim)
    codes[:, 0], codes[:, 1] = rho * t.cos(), rho * t.sin()
    return codes.to(next(space.parameters()).device), np.degrees(t.numpy()) % 360, rho


def run(cfg, trained):
    """Test mode with the GANmut checkpoint `trained` (model.Trained): the edit of the flags, the
    emotion wheel, or every emotion and the plane map."""
    device = resolve_device(cfg.device)
    amp = trained.amp_dtype(cfg.amp, device)
    out_dir = mode_folder(cfg, 'results')
    G, _ = trained.networks(device)
    space = ganmut.load_space(trained, device)
    ckpt_cfg, names, path = trained.config, trained.label_names, trained.path
    size = ckpt_cfg['image_size']
    faces = faces_to_edit(cfg, ckpt_cfg, size, held_out_emotion_faces)
    print(f'test mode (GANmut, {ckpt_cfg["parametrization"]} space): {len(faces)} face(s), model {path}')
    print('\n'.join(gs.describe(space)))
    os.makedirs(out_dir, exist_ok=True)
    x_all = images_to_float(torch.from_numpy(np.stack([f for _, f in faces])), device, torch.contiguous_format)
    edit = edit_code(cfg, space)
    if cfg.emotion_wheel:
        return wheel(cfg, G, space, x_all, faces, out_dir, device, amp)
    if edit is not None:
        return edit_faces(G, x_all, faces, edit, out_dir, device, amp)
    return all_emotions(cfg, G, space, x_all, faces, names, out_dir, device, amp)


def edit_faces(G, x_all, faces, edit, out_dir, device, amp):
    code, desc = edit
    path = save_edits(G, x_all, faces, code.unsqueeze(0).expand(len(faces), -1), out_dir, device, amp)
    with open(os.path.join(out_dir, 'edit.json'), 'w') as f:
        json.dump({'edit': desc, 'code': code.tolist(), 'faces': [n for n, _ in faces]}, f, indent=1)
    print(f'edited {len(faces)} face(s) to {desc} (code {", ".join(f"{v:+.3f}" for v in code.tolist())}): '
          f'{out_dir}/*_edited.png, grid (input | edited | attention): {path}')
    return path


def all_emotions(cfg, G, space, x_all, faces, names, out_dir, device, amp):
    """Without edit flags: each face at every emotion at full intensity, and the plane map."""
    intensity = 1.0
    with torch.no_grad():
        e = torch.arange(len(names), device=device)
        codes = space.emotion_code(e, torch.full((len(names),), intensity, device=device))
    rows, per_face = [], []
    for (name, img), x in zip(faces, x_all):
        frames, _ = generate(G, x, codes, device, amp)
        for n, f in zip(names, frames):
            vis.save_png(f, os.path.join(out_dir, name, f'{n}.png'))
        rows.append([img] + list(frames))
        per_face.append(frames)
    photos = [face_crops.save_stills(faces, [f[k] for f in per_face], out_dir, f'_{n}')   # photos: pasted back
              for k, n in enumerate(names)]
    if photos[0]:
        print(f'photos with every face at each emotion: {out_dir}/<photo>_<emotion>.png')
    size = x_all.shape[-1]
    header = vis.label_row(['input'] + names, size, size=max(8, min(12, size // 4)))
    grid_path = vis.save_png(vis.stack([header, vis.grid(rows)]), os.path.join(out_dir, 'grid.png'))
    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        plane_faces, _ = gs.run_codes(G, x_all[0], gv.plane_codes(gs.PLANE_GRID, space.dim))
    plane_path = vis.save_png(gv.plane_map(plane_faces, gs.PLANE_GRID, space, f'{faces[0][0]}'),
                              os.path.join(out_dir, 'plane.png'))
    print(f'wrote every emotion at intensity {intensity:g} for {len(faces)} face(s): {grid_path} '
          f'(input | {" | ".join(names)}), <face>/<emotion>.png, and the plane map {plane_path}')
    return grid_path


def wheel(cfg, G, space, x_all, faces, out_dir, device, amp):
    """--emotion_wheel: each face once around the plane, as GANimation's animations."""
    codes, angles, rho = wheel_codes(cfg, space, cfg.wheel_frames)
    nearest = nearest_emotion(space, codes).tolist()
    cols = np.unique(np.linspace(0, len(codes) - 1, min(len(codes), cfg.grid_columns)).round().astype(int))
    all_frames, rows = [], []
    for (name, _), x in zip(faces, x_all):
        frames, _ = generate(G, x, codes, device, amp, cfg.test_batch_size)
        for t, f in enumerate(frames):
            vis.save_png(f, os.path.join(out_dir, name, f'frame_{t:04d}.png'))
        save_animation(frames, os.path.join(out_dir, f'{name}.gif'), cfg.fps, getattr(cfg, 'mp4', 'auto'))
        rows.append([frames[j] for j in cols])
        all_frames.append(frames)
    for photo, full, _ in face_crops.animated_photos(faces, all_frames):   # photos: faces pasted back
        save_animation(full, os.path.join(out_dir, f'{photo}_animated.gif'), cfg.fps, getattr(cfg, 'mp4', 'auto'))
        print(f'{photo}: {out_dir}/{photo}_animated.gif')
    size = x_all.shape[-1]
    header = vis.label_row([f'{angles[j]:.0f} deg\n{space.names[nearest[j]]}' for j in cols], size,
                          height=max(26, size // 3), size=max(8, min(11, size // 5)))
    grid_path = vis.save_png(vis.stack([header, vis.grid(rows)]), os.path.join(out_dir, 'grid.png'))
    save_animation([np.concatenate([s[t] for s in all_frames], 1) for t in range(len(codes))],
                   os.path.join(out_dir, 'all_faces.gif'), cfg.fps, getattr(cfg, 'mp4', 'auto'))
    np.savetxt(os.path.join(out_dir, 'wheel_codes.txt'), np.column_stack([angles, codes.cpu().numpy()]),
               fmt='%.4f', header='theta_deg ' + ' '.join('xyz'[j] if j < 3 else f'z{j}' for j in range(space.dim)))
    print(f'emotion wheel (radius {rho:.2f}, {len(codes)} frames): {len(faces)} GIF(s) in {out_dir}/, '
          f'grid: {grid_path}, all faces: {os.path.join(out_dir, "all_faces.gif")}')
    return grid_path
