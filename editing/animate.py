"""Test mode: animate faces along an AU sequence, or edit them to explicit AUs.

    python main.py --mode test --test_images_dir faces/ --test_attributes_path seq.txt
    python main.py --mode test --target_aus "AU12=4,AU25=2"
    python main.py --mode test --test_images_dir photo.jpg --detect_faces true --test_attributes_path clip.csv \
        --interpolate 2 --smooth 1.5

Frames go through the generator in batches. Without test flags the held-out
synthetic faces and a built-in AU sequence are used. The AU sequence is an AU table or
an OpenFace video CSV; --interpolate adds frames between its rows, --smooth smooths the
AU curves over time; --driving_video reads the sequence from a video's face (editing/au_reader.py).
Photos (--detect_faces true, --face_box) are cropped, edited and pasted back by editing/photos.py; a
video as --test_images_dir is edited frame by frame (edit_video).
"""
import os

import numpy as np
import torch
from tqdm import tqdm

import data_loader as dl
import synthetic_faces as sf
from editing import au_reader, framing
from editing import photos as face_crops
from editing import video
from model import critic_reading
from solver import images_to_float
from utils import visualize as vis
from utils.errors import FlagError, MissingInput, UserError
from utils.records import mode_folder
from utils.runtime import resolve_device


def source_of(cfg, D):
    """Where the faces' own AUs come from (--source_aus): 'critic' (its AU head), 'reader'
    (editing/au_reader.py) or 'neutral' (neither is there: 0, and it says so)."""
    choice = getattr(cfg, 'source_aus', 'auto')
    if choice == 'critic' and D is None:
        raise FlagError('--source_aus critic: there is no critic beside this generator; use --source_aus reader, '
                        'or put the critic file beside it')
    if choice == 'critic' or (choice == 'auto' and D is not None):
        return 'critic'
    if choice == 'reader' or au_reader.available():
        print('the faces\' own AUs: read by the AU reader (MediaPipe blendshapes, an estimate)')
        return 'reader'
    print('no critic beside this generator and no AU reader to read the faces\' own AUs: the AUs not named in '
          f'--target_aus start from 0 (neutral); put the critic file beside it, or: {au_reader.INSTALL_HINT}')
    return 'neutral'


def own_aus(source, D, x, faces, label_names, device, reader=None):
    """(N, c_dim) in [0, 1]: the faces' own AUs from `source` (source_of). The reader reads each face in the
    photo around it when it was cut from one (in the reader's own framing), else in its crop; a face it
    cannot read starts from 0, and is named. `reader`: an open au_reader.Reader, else one is opened."""
    if source == 'critic':
        return critic_reading(D, x, device)
    out = torch.zeros(len(faces), len(label_names))
    if source == 'neutral':
        return out
    if reader is None:
        with au_reader.Reader('--source_aus reader') as opened:
            return own_aus(source, D, x, faces, label_names, device, opened)
    cols = [sf.AU_INDEX[n] for n in label_names]
    unread = []
    for i, face in enumerate(faces):
        photo, points = getattr(face, 'photo', None), getattr(face, 'points', None)
        got = reader.face(photo.pixels, points) if photo is not None and points is not None else \
            reader.largest(au_reader.enlarged(face[1]))
        if got is None:
            unread.append(face[0])
        else:
            out[i] = torch.from_numpy(got[0][cols] / 5).float()
    if unread:
        print(f'the AU reader read no face in {", ".join(unread)}: its AUs start from 0')
    return out


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
        video.ffmpeg('--mp4')
    except UserError:
        if mp4 == 'true':
            raise FlagError('--mp4 true needs imageio-ffmpeg: pip install -r requirements-extras.txt') from None
        return paths
    path = os.path.splitext(gif_path)[0] + '.mp4'
    try:
        video.write(frames, path, float(fps))
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
        if video.is_video(cfg.test_images_dir):
            raise FlagError(f'--test_images_dir {cfg.test_images_dir}: a video is edited by GANimation models only')
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
    """(AU sequence (T, 17 or c_dim) in 0-5 over the model's columns, reference frames or None, frames per
    second: the driving video's, else --fps)."""
    if getattr(cfg, 'driving_video', ''):
        read = au_reader.read_video(cfg.driving_video, '--driving_video', crop_size=size)
        print(f'--driving_video {cfg.driving_video}: {len(read.aus)} frames at {read.fps:g} fps, played at that rate')
        return read.aus[:, [sf.AU_INDEX[n] for n in label_names]], read.faces, read.fps
    seq, refs = _sequence_of_flags(cfg, label_names, size)
    return seq, refs, cfg.fps


def _sequence_of_flags(cfg, label_names, size):
    """(AU sequence, reference frames or None) of --test_attributes_path, else the built-in one."""
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
    if cfg.test_images_dir and video.is_video(cfg.test_images_dir):
        return edit_video(cfg, G, D, ckpt_cfg, label_names, out_dir, device, amp)
    faces = faces_to_edit(cfg, ckpt_cfg, size)
    print(f'test mode: {len(faces)} face(s), model {path}')
    os.makedirs(out_dir, exist_ok=True)
    x_all = images_to_float(torch.from_numpy(np.stack([f for _, f in faces])), device, torch.contiguous_format)
    if cfg.target_aus:
        return edit(cfg, G, D, x_all, faces, label_names, out_dir, device, amp)

    seq, refs, fps = _sequence(cfg, label_names, size)
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
        save_animation(frames, os.path.join(out_dir, f'{name}.gif'), fps, mp4)
        rows.append([frames[j] for j in cols])
        all_frames.append(frames)
    for photo, full, sbs in face_crops.animated_photos(faces, all_frames, refs):   # photos: faces pasted back
        save_animation(full, os.path.join(out_dir, f'{photo}_animated.gif'), fps, mp4)
        if sbs is not None:
            save_animation(sbs, os.path.join(out_dir, f'{photo}_side_by_side.gif'), fps, mp4)
        print(f'{photo}: {out_dir}/{photo}_animated.gif' + (' and _side_by_side.gif (reference | photo)'
                                                           if sbs is not None else ''))
    grid_path = vis.save_png(vis.grid(rows), os.path.join(out_dir, 'grid.png'))
    # one GIF with every face side by side (and the reference on the left)
    strips = ([refs] if refs is not None else []) + all_frames
    save_animation([np.concatenate([s[t] for s in strips], 1) for t in range(len(seq))],
                   os.path.join(out_dir, 'all_faces.gif'), fps, mp4)
    dl.write_au_table(os.path.join(out_dir, 'au_sequence.txt'), [f'frame_{t:06d}' for t in range(len(seq))], seq,
                      label_names)
    print(f'wrote {len(faces)} GIF(s) of {len(seq)} frames to {out_dir}/, grid: {grid_path}, '
          f'all faces: {os.path.join(out_dir, "all_faces.gif")}')
    return grid_path


def pretrained_preview(cfg):
    """The demo's first seconds: the pretrained demo generator (model.PRETRAINED_DEMO) animates the held-out
    faces into <outputs_dir>/pretrained/ at once, while the demo trains its own model. Only when the demo
    trains that generator's architecture; returns the grid's path or None."""
    import copy

    from model import GENERATOR_SHAPE, PRETRAINED_DEMO, Trained
    from utils.records import STAGES
    if not os.path.exists(PRETRAINED_DEMO):
        return None
    trained = Trained.newest(PRETRAINED_DEMO)
    other = [k for k in GENERATOR_SHAPE if trained.config.get(k) != getattr(cfg, k)]
    if other:
        print(f'note: the pretrained demo generator is not shown first: it has {other[0]} '
              f'{trained.config.get(other[0])}, this demo {getattr(cfg, other[0])}')
        return None
    view = copy.copy(cfg)
    with STAGES.timed('data'):
        dl.resolve_data(view, 'au')          # the demo's data, made now if missing (the run finds it made)
    trained.config.update(image_dir=view.image_dir, attr_path=view.attr_path)
    view.test_results_dir = os.path.join(cfg.outputs_dir, 'pretrained')
    with STAGES.timed('pretrained preview'):
        grid = run(view, trained)
    print(f'while the demo trains its own model, the pretrained demo generator ({trained.iteration} iterations, '
          f'pretrained/README.md) has animated the held-out faces: {grid}, '
          f'{os.path.join(view.test_results_dir, "all_faces.gif")}')
    return grid


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
    """Start from each face's own AUs (own_aus), set the given ones."""
    targets = parse_target_aus(cfg.target_aus, label_names)
    own = own_aus(source_of(cfg, D), D, x_all, faces, label_names, device)
    cond = own * 5
    for idx, v in targets.items():
        cond[:, idx] = v
    path = save_edits(G, x_all, faces, cond / 5, out_dir, device, amp, own)
    desc = ', '.join(f'{label_names[i]}={v:g}' for i, v in targets.items())
    print(f'edited {len(faces)} face(s) to {desc}: {out_dir}/*_edited.png, grid (input | edited | attention): {path}')
    return path


GIF_MAX_FRAMES = 150   # an edited video gets a GIF beside its MP4 when it is no longer than this


@torch.no_grad()
def edit_video(cfg, G, D, ckpt_cfg, label_names, out_dir, device, amp):
    """--test_images_dir clip.mp4: every frame's faces found and aligned (editing/photos.py), edited to
    --target_aus on top of their own AUs (own_aus, per frame) or animated by the AU sequence (frame t
    plays row t, looping), pasted back; an MP4 of the same frame count and rate (and a GIF when short).
    Frames without a face are kept as they are, and counted."""
    size = ckpt_cfg['image_size']
    os.makedirs(out_dir, exist_ok=True)
    face_framing = framing.of_model(cfg, ckpt_cfg)
    targets = parse_target_aus(cfg.target_aus, label_names) if cfg.target_aus else None
    if targets is None:
        seq, _, _ = _sequence(cfg, label_names, size)
        seq, _ = retime(seq, getattr(cfg, 'interpolate', 0), getattr(cfg, 'smooth', 0.0))
    source = source_of(cfg, D) if targets is not None else None
    reader = au_reader.Reader('--source_aus reader') if source == 'reader' else None
    frames, fps, count = video.frames(cfg.test_images_dir, '--test_images_dir (a video)')
    frames = tqdm(frames, total=count or None, desc='frames', unit='frame', leave=False)
    stem = os.path.splitext(os.path.basename(cfg.test_images_dir))[0]
    counts = dict(faces=0, without=0)
    short = []

    def edited_frames():
        for t, frame in enumerate(frames):
            found = face_crops.find_faces(frame, face_framing, size, why='--test_images_dir (a video)')
            counts['faces'] += len(found)
            if not found:
                counts['without'] += 1
                out = frame
            else:
                crops = np.stack([framing.warp_crop(frame, m, size) for _, m in found])
                x = images_to_float(torch.from_numpy(crops), device, torch.contiguous_format)
                if targets is not None:
                    photo = face_crops.Photo(stem, cfg.test_images_dir, frame)
                    faces = [face_crops.Face(f'{stem}_{t}_{k}', c, photo, m, d.points, d.box)
                             for k, ((d, m), c) in enumerate(zip(found, crops))]
                    own = own_aus(source, D, x, faces, label_names, device, reader)
                    cond = own * 5
                    for idx, v in targets.items():
                        cond[:, idx] = v
                else:
                    own = critic_reading(D, x, device) if G.relative else None
                    cond = torch.from_numpy(seq[t % len(seq)]).float().expand(len(found), -1)
                c = (cond / 5).to(device)
                src = own.to(device) if (own is not None and G.relative) else None
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    y, _, _ = G(x, c, src)
                out = framing.paste(frame, [(m, before, after) for (_, m), before, after
                                            in zip(found, crops, vis.to_uint8(y))])
            if len(short) <= GIF_MAX_FRAMES:
                short.append(face_crops.fit_within(out, face_crops.ANIMATION_MAX_SIDE))
            yield out
    try:
        mp4, n = video.write(edited_frames(), os.path.join(out_dir, f'{stem}_edited.mp4'), fps)
    finally:
        if reader is not None:
            reader.close()
    written = [mp4]
    if n <= GIF_MAX_FRAMES:
        written.append(vis.save_gif(short, os.path.join(out_dir, f'{stem}_edited.gif'), fps))
    what = 'edited to ' + cfg.target_aus if targets is not None else f'animated by an AU sequence of {len(seq)} rows'
    print(f'{cfg.test_images_dir}: {n} frames at {fps:g} fps, {counts["faces"]} faces {what}'
          + (f'; {counts["without"]} frame(s) without a face kept as they are' if counts['without'] else '')
          + ': ' + ', '.join(written))
    return mp4
