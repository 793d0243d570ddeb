"""Test mode: animate faces along an AU sequence, or edit them to explicit AUs.

    python main.py --mode test --test_images_dir faces/ --test_attributes_path seq.txt
    python main.py --mode test --target_aus "AU12=4,AU25=2"
    python main.py --mode test --test_images_dir photo.jpg --detect_faces true --test_attributes_path clip.csv \
        --interpolate 2 --smooth 1.5

Frames go through the generator in batches. Without test flags the held-out
synthetic faces and a built-in AU sequence are used. The AU sequence is an AU table or
an OpenFace video CSV; --interpolate adds frames between its rows, --smooth smooths the
AU curves over time. Photos (--detect_faces true, --face_box) are cropped, edited and
pasted back by editing/photos.py.
"""
import os

import numpy as np
import torch

import data_loader as dl
import synthetic_faces as sf
from editing import framing
from editing import photos as face_crops
from model import critic_reading
from solver import images_to_float
from utils import visualize as vis
from utils.errors import FlagError, MissingInput
from utils.records import mode_folder
from utils.runtime import resolve_device


def parse_target_aus(text, label_names):
    """'AU12=4,AU25=2' -> {column index: intensity 0-5}. Errors name the bad part."""
    out = {}
    for part in [p.strip() for p in text.split(',') if p.strip()]:
        if '=' not in part:
            raise FlagError(f'--target_aus: {part!r} is not of the form AU12=4')
        name, value = (s.strip() for s in part.split('=', 1))
        try:
            idx = dl.select_aus([name], label_names)[0]
        except ValueError:
            raise FlagError(f'--target_aus: {name!r} is not one of the model\'s AUs: '
                             f'{" ".join(label_names)}') from None
        try:
            v = float(value)
        except ValueError:
            raise FlagError(f'--target_aus: the intensity of {name} is not a number: {value!r}') from None
        if not 0 <= v <= 5:
            raise FlagError(f'--target_aus: {name}={v:g} is outside the intensity range [0, 5]')
        out[idx] = v
    if not out:
        raise FlagError('--target_aus: no AU given; use e.g. "AU12=4,AU25=2"')
    return out


def demo_sequence(frames_between=6):
    """Built-in AU sequence: neutral -> happy -> surprise -> sad -> anger -> disgust -> neutral."""
    keys = [np.zeros(sf.NUM_AUS)] + [sf.emotion_prototype(e, 4.5) for e in
                                     ('happy', 'surprise', 'sad', 'anger', 'disgust')] + [np.zeros(sf.NUM_AUS)]
    return interpolate_keyframes(np.stack(keys), frames_between)


def smooth_sequence(seq, sigma):
    """Gaussian smoothing of each AU curve over time, standard deviation `sigma` frames
    (kernel +-3 sigma; the first and last frames are repeated past the ends). 0: unchanged."""
    seq = np.asarray(seq, dtype=np.float64)
    if sigma <= 0 or len(seq) < 2:
        return seq.copy()
    radius = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(seq, ((radius, radius), (0, 0)), mode='edge')
    return np.stack([np.convolve(padded[:, j], k, mode='valid') for j in range(seq.shape[1])], 1)


def retime(seq, interpolate=0, smooth=0.0):
    """--interpolate N (N frames between consecutive rows, linear), then --smooth (gaussian,
    in output frames). Returns (new sequence, index of the nearest source row per frame)."""
    if interpolate < 0 or smooth < 0:
        raise FlagError(f'--interpolate {interpolate} / --smooth {smooth:g}: must not be negative')
    n = int(interpolate)
    out = interpolate_keyframes(np.asarray(seq, dtype=np.float64), n) if n and len(seq) > 1 else np.asarray(seq)
    src = np.minimum(np.round(np.arange(len(out)) / (n + 1)).astype(int), len(seq) - 1)
    return np.clip(smooth_sequence(out, smooth), 0, 5), src


def save_animation(frames, gif_path, fps, mp4='auto'):
    """GIF always; an MP4 beside it when imageio-ffmpeg is installed (mp4 'auto'), or
    'true' (an error without it), never with 'false'. Returns the paths written."""
    mp4 = str(mp4).lower()
    if mp4 not in ('auto', 'true', 'false'):
        raise FlagError(f'--mp4 {mp4}: use auto, true or false')
    paths = [vis.save_gif(list(frames), gif_path, fps)]
    if mp4 == 'false':
        return paths
    try:
        import imageio_ffmpeg
    except ImportError:
        if mp4 == 'true':
            raise FlagError('--mp4 true needs imageio-ffmpeg: pip install -r requirements-extras.txt') from None
        return paths
    path = os.path.splitext(gif_path)[0] + '.mp4'
    h, w = frames[0].shape[:2]
    ph, pw = h % 2, w % 2   # H.264 in yuv420p needs even sides: repeat the last row/column
    try:
        writer = imageio_ffmpeg.write_frames(path, (w + pw, h + ph), fps=float(fps), macro_block_size=2,
                                             ffmpeg_log_level='error')
        writer.send(None)
        for f in frames:
            writer.send(np.ascontiguousarray(np.pad(f, ((0, ph), (0, pw), (0, 0)), mode='edge')))
        writer.close()
    except Exception as e:   # the GIF is there; an MP4 that ffmpeg cannot write is not worth a crash
        if mp4 == 'true':
            raise FlagError(f'--mp4: ffmpeg could not write {path}: {e}') from None
        print(f'note: no MP4 for {gif_path}: ffmpeg failed ({e})')
        return paths
    return paths + [path]


def interpolate_keyframes(keys, n_between):
    """Linear interpolation with `n_between` frames between consecutive keyframes."""
    out = []
    for a, b in zip(keys[:-1], keys[1:]):
        for t in np.arange(n_between + 1) / (n_between + 1):
            out.append(a * (1 - t) + b * t)
    out.append(keys[-1])
    return np.stack(out)


@torch.no_grad()
def generate(G, x, conds, device, amp_dtype, batch_size=64, aus_src=None):
    """x: (3, H, W) one face; conds: (T, c_dim) in [0, 1] -> (T, H, W, 3) uint8 frames and masks.
    aus_src: (c_dim,) the face's own AUs in [0, 1], for a generator with --g_condition relative."""
    frames, masks = [], []
    for s in range(0, conds.shape[0], batch_size):
        c = conds[s:s + batch_size].to(device)
        c_src = aus_src.to(device).expand(c.shape[0], -1) if aus_src is not None else None
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            y, attn, _ = G(x.unsqueeze(0).expand(c.shape[0], -1, -1, -1), c, c_src)
        frames.append(vis.to_uint8(y))
        masks.append(vis.to_uint8(attn * 2 - 1) if attn is not None else None)
    return np.concatenate(frames), (np.concatenate(masks) if masks[0] is not None else None)


def held_out_au_faces(image_dir, attr_path, size):
    """The test split of AU data (held-out identities of the synthetic faces)."""
    return dl.au_dataset(image_dir, attr_path, size, split='test')


def faces_to_edit(cfg, ckpt_cfg, size, held_out=held_out_au_faces):
    """[(name, (H, W, 3) uint8)] of the faces to animate or edit: --test_images_dir (aligned crops, or the
    faces of photos), else --test_num_faces held-out faces of the checkpoint's data (`held_out(image_dir,
    attr_path, size)`: their dataset)."""
    if cfg.test_images_dir:
        if face_crops.photo_mode(cfg):   # photos: detect or --face_box, crop with the training framing
            return face_crops.photo_faces(cfg, size, framing.of_model(cfg, ckpt_cfg))
        files = face_crops.image_files(cfg.test_images_dir)   # a folder of aligned crops, or one file
        for f in files:
            face_crops.note_unaligned(f, size)
        return [(os.path.splitext(os.path.basename(f))[0], dl.load_image(f, size)) for f in files]
    image_dir, attr_path = ckpt_cfg.get('image_dir'), ckpt_cfg.get('attr_path')
    if not image_dir or not attr_path or not os.path.exists(attr_path):
        raise MissingInput('test mode needs --test_images_dir: the training data of this checkpoint '
                                f'({attr_path}) is not available')
    ds = held_out(image_dir, attr_path, size)
    n = min(cfg.test_num_faces, len(ds))
    return [(os.path.splitext(ds.files[i])[0], ds.load_uint8(i)) for i in range(n)]


def _sequence(cfg, label_names, size):
    """(AU sequence (T, 17 or c_dim) in 0-5 over the model's columns, reference frames or None)."""
    if cfg.test_attributes_path and cfg.test_attributes_path.lower().endswith('.csv'):
        import openface_utils  # an OpenFace FeatureExtraction / FaceLandmarkImg CSV
        values, paths = openface_utils.sequence_from_csv(cfg.test_attributes_path)
        refs = np.stack([dl.load_image(p, size) for p in paths]) if paths else None
        return values[:, dl.select_aus(label_names, openface_utils.AU_NAMES)], refs
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


def run(cfg, trained):
    """Test mode with the GANimation checkpoint `trained` (model.Trained): an AU sequence animated on
    every face, or with --target_aus an explicit edit."""
    device = resolve_device(cfg.device)
    amp = trained.amp_dtype(cfg.amp, device)
    out_dir = mode_folder(cfg, 'results')
    G, D = trained.networks(device)
    ckpt_cfg, label_names, path = trained.config, trained.label_names, trained.path
    size = ckpt_cfg['image_size']
    faces = faces_to_edit(cfg, ckpt_cfg, size)
    print(f'test mode: {len(faces)} face(s), model {path}')
    os.makedirs(out_dir, exist_ok=True)
    x_all = images_to_float(torch.from_numpy(np.stack([f for _, f in faces])), device, torch.contiguous_format)
    if cfg.target_aus:
        return edit(cfg, G, D, x_all, faces, label_names, out_dir, device, amp)

    seq, refs = _sequence(cfg, label_names, size)
    seq, src = retime(seq, getattr(cfg, 'interpolate', 0), getattr(cfg, 'smooth', 0.0))
    refs = refs[src] if refs is not None else None
    mp4 = getattr(cfg, 'mp4', 'auto')
    conds = torch.from_numpy(seq / 5.0).float()
    cols = _subsample(len(seq), cfg.grid_columns)
    rows = [[refs[j] for j in cols]] if refs is not None else []
    all_frames = []
    # the faces' own AUs: the sources of a --g_condition relative generator
    aus_own = critic_reading(D, x_all, device) if G.relative else [None] * len(faces)
    for (name, _), x, aus_src in zip(faces, x_all, aus_own):
        frames, _ = generate(G, x, conds, device, amp, cfg.test_batch_size, aus_src)
        face_dir = os.path.join(out_dir, name)
        for t, f in enumerate(frames):
            vis.save_png(f, os.path.join(face_dir, f'frame_{t:04d}.png'))
        save_animation(frames, os.path.join(out_dir, f'{name}.gif'), cfg.fps, mp4)
        rows.append([frames[j] for j in cols])
        all_frames.append(frames)
    for photo, full, sbs in face_crops.animated_photos(faces, all_frames, refs):   # photos: faces pasted back
        save_animation(full, os.path.join(out_dir, f'{photo}_animated.gif'), cfg.fps, mp4)
        if sbs is not None:
            save_animation(sbs, os.path.join(out_dir, f'{photo}_side_by_side.gif'), cfg.fps, mp4)
        print(f'{photo}: {out_dir}/{photo}_animated.gif' + (' and _side_by_side.gif (reference | photo)'
                                                           if sbs is not None else ''))
    grid_path = vis.save_png(vis.grid(rows), os.path.join(out_dir, 'grid.png'))
    # one GIF with every face side by side (and the reference on the left)
    strips = ([refs] if refs is not None else []) + all_frames
    save_animation([np.concatenate([s[t] for s in strips], 1) for t in range(len(seq))],
                   os.path.join(out_dir, 'all_faces.gif'), cfg.fps, mp4)
    np.savetxt(os.path.join(out_dir, 'au_sequence.txt'), seq, fmt='%.2f', header=' '.join(label_names))
    print(f'wrote {len(faces)} GIF(s) of {len(seq)} frames to {out_dir}/, grid: {grid_path}, '
          f'all faces: {os.path.join(out_dir, "all_faces.gif")}')
    return grid_path


@torch.no_grad()
def save_edits(G, x_all, faces, conds, out_dir, device, amp, aus_own=None):
    """Each face edited to its condition row: <face>_edited.png, photos with every face pasted
    back, and edits.png (input | edited | attention). Returns the grid's path.
    aus_own: (N, c_dim) the faces' own AUs, for a generator with --g_condition relative."""
    rows, edited = [], []
    for i, ((name, img), x, c) in enumerate(zip(faces, x_all, conds)):
        aus_src = aus_own[i] if aus_own is not None else None
        frames, masks = generate(G, x, c.unsqueeze(0), device, amp, aus_src=aus_src)
        vis.save_png(frames[0], os.path.join(out_dir, f'{name}_edited.png'))
        rows.append([img, frames[0]] + ([masks[0]] if masks is not None else []))
        edited.append(frames[0])
    for p in face_crops.save_stills(faces, edited, out_dir, '_edited'):   # photos: every face pasted back
        print(f'photo with its faces edited: {p}')
    return vis.save_png(vis.grid(rows), os.path.join(out_dir, 'edits.png'))


def edit(cfg, G, D, x_all, faces, label_names, out_dir, device, amp):
    """Start from each face's own AUs (read by the critic's AU head), set the given ones. A released
    generator without its critic starts the AUs not named from 0 (a neutral face), and says so."""
    targets = parse_target_aus(cfg.target_aus, label_names)
    if D is None:
        own = torch.zeros(x_all.shape[0], len(label_names))
        print('no critic beside this generator to read the faces\' own AUs: the AUs not named in --target_aus '
              'start from 0 (neutral); put the critic file beside it to start from each face\'s own')
    else:
        own = critic_reading(D, x_all, device)
    cond = own * 5
    for idx, v in targets.items():
        cond[:, idx] = v
    path = save_edits(G, x_all, faces, cond / 5, out_dir, device, amp, own)
    desc = ', '.join(f'{label_names[i]}={v:g}' for i, v in targets.items())
    print(f'edited {len(faces)} face(s) to {desc}: {out_dir}/*_edited.png, grid (input | edited | attention): {path}')
    return path
