"""The face editor's work, apart from its page (app/page.py): the model to serve, the faces to edit
(held-out faces, or the faces of an uploaded photo), their own AUs, one edit, an animation.

Nothing here imports Gradio, so the tests call it without a browser. Pictures are (H, W, 3) uint8
arrays; bad input raises utils.errors.UserError whose message the page shows as it is.

    python -m app.editor --time      # the server-side time of one slider edit (docs/app.md)
"""
import argparse
import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import synthetic_faces as sf
from editing import animate, au_reader, framing
from editing import photos as face_crops
from ganmut import edit as ganmut_edit
from ganmut import plots as gv
from ganmut import space as ganmut
from model import PRETRAINED_DEMO, PRETRAINED_REAL, Generator, Trained
from solver import images_to_float
from utils import checkpoint
from utils import visualize as vis
from utils.errors import DataError, MissingInput, UserError
from utils.records import mode_folder
from utils.runtime import resolve_device

MAX_SIDE = 4096          # an uploaded photo with a longer side is scaled down to this first (and the page says so)
MAX_VIDEO_FRAMES = 300   # a driving video plays its first 300 frames (10 s at 30 fps) and says so
PREVIEW_SIDE = 64        # while a slider moves: the edit of the face brought to this side (fewer pixels)
PRESET_INTENSITY = 4.0   # the emotion presets: their prototype AUs at this intensity (0-5)
PLANE_SIDE = 360         # the GANmut plane's picture, pixels
PLANE_LIM = 1.2          # ... spans codes -1.2 .. 1.2 (ganmut/plots.py's default)
ANIMATION_SIDE = 384     # animated photos are scaled down to this longer side (GIFs of a few MB)
REFERENCE_SIDE = 128     # the driving video's face, beside the animation
DISPLAY_SIDE = 256       # crops smaller than this are shown (and animated) enlarged by a whole factor
DEMO_FOLDERS = {'ganimation': 'outputs/demo', 'ganmut': 'outputs/demo_ganmut'}   # main.DEMO's outputs_dir


def model_to_serve(cfg, given):
    """The checkpoint file or folder the page serves: --test_models_dir; else the run folder of
    --outputs_dir when it holds a checkpoint; else the demo's run of --model; else (GANimation) the
    generator trained on real faces in the repository, or the pretrained demo generator when that file is
    not there. None there: say what to do."""
    if cfg.test_models_dir:
        return cfg.test_models_dir
    run = mode_folder(cfg, 'models')
    demo = os.path.join(DEMO_FOLDERS[cfg.model], 'models')
    tried = [run] if 'outputs_dir' in given else [run, demo]
    for folder in tried:
        if os.path.isdir(folder) and checkpoint.list_checkpoints(folder):
            return folder
    shipped = [(p, what) for p, what in ((PRETRAINED_REAL, 'generator trained on real faces'),
                                         (PRETRAINED_DEMO, 'demo generator (synthetic faces)')) if os.path.exists(p)]
    if cfg.model == 'ganimation' and 'outputs_dir' not in given and shipped:
        path, what = shipped[0]
        print(f'no run of your own yet (no checkpoint in {" or ".join(tried)}): serving the pretrained {what} '
              f'{shortest(path)} (pretrained/README.md); `python main.py --mode demo` trains your own in about '
              f'ten minutes')
        return path
    hint = ' --model ganmut' if cfg.model == 'ganmut' else ''
    raise MissingInput(f'no model to serve: no checkpoint in {" or ".join(tried)}. Train one with `python main.py '
                       f'--mode demo{hint}` (about ten minutes on a laptop), or pass --test_models_dir (a run\'s '
                       f'models/ folder, or a released generator file: docs/released.md)')


def enlarged(image, side=DISPLAY_SIDE):
    """A small crop (or frame) enlarged by a whole factor, nearest pixels, so that it is seen as it is."""
    if image is None:
        return None
    k = side // max(image.shape[:2])
    return image if k < 2 else np.repeat(np.repeat(image, k, 0), k, 1)


def shortest(path):
    """The path relative to the working directory when it lies inside it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith('..') else rel


@dataclass
class Subject:
    """The face or faces being edited: `faces` are photos.Face crops at the model's size (cut from
    `photo` when one was uploaded), `own` their own AUs (N, c_dim) in 0-5 (GANimation), `note` what
    the page says about them."""
    faces: list
    own: np.ndarray
    note: str = ''
    photo: object = None

    @property
    def picture(self):
        """What the page shows as the input: the photo with its faces outlined, else the crop."""
        if self.photo is None:
            return self.faces[0].crop
        return face_crops.draw_faces(self.photo.pixels, self.faces)


@dataclass
class Edited:
    """One edit: the output (the photo with its faces pasted back, or the crop) and the attention
    masks of the faces side by side (None for a generator without one)."""
    image: np.ndarray
    mask: np.ndarray = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class Editor:
    """A loaded model and what the page does with it."""

    def __init__(self, trained, device='auto', amp='auto', num_faces=6, results_dir='outputs/app'):
        self.trained, self.model = trained, trained.model
        self.device = resolve_device(device)
        self.amp = trained.amp_dtype(amp, self.device)
        self.G, self.D = trained.networks(self.device)
        self.config, self.label_names = trained.config, trained.label_names
        self.size = self.config['image_size']
        self.space = ganmut.load_space(trained, self.device) if self.model == 'ganmut' else None
        # the faces' own AUs: the critic, else the AU reader, else 0 (test mode's --source_aus auto)
        self.source = animate.source_of(SimpleNamespace(source_aus='auto'), self.D) if self.space is None else None
        self.results_dir = results_dir
        self.samples = self._sample_faces(num_faces)

    # ------------------------------------------------------------------ faces
    def _sample_faces(self, n):
        """[(name, crop)]: the held-out faces of the checkpoint's data; else, for a model trained on real
        faces, scikit-image's astronaut; else synthetic faces rendered now (neutral, identities the
        training never drew: seeds from 900000)."""
        cfg = SimpleNamespace(test_images_dir='', test_num_faces=n)
        held_out = ganmut_edit.held_out_emotion_faces if self.model == 'ganmut' else animate.held_out_au_faces
        try:
            return animate.faces_to_edit(cfg, self.config, self.size, held_out)
        except (UserError, OSError):
            pass
        if self.trained.released or self.config.get('dataset_kind') == 'folder':    # a model of real faces
            astronaut = self._astronaut()
            if astronaut:
                return astronaut
        return [(f'synthetic_{k}', sf.render(sf.sample_identity(900000 + k), np.zeros(sf.NUM_AUS), self.size))
                for k in range(n)]

    def _astronaut(self):
        """[('astronaut', crop)]: the face of scikit-image's astronaut (a public-domain photo that ships in
        the package), framed as the model's training crops; [] without scikit-image or the face detector."""
        try:
            from skimage import data
        except ImportError:
            return []
        pixels = data.astronaut()
        face_framing = framing.of_model(SimpleNamespace(face_framing='auto'), self.config)
        try:
            found = face_crops.find_faces(pixels, face_framing, self.size, why='the face editor\'s sample face')
        except UserError:
            return []
        return [('astronaut', framing.warp_crop(pixels, m, self.size)) for _, m in found[:1]]

    @property
    def sample_names(self):
        return [name for name, _ in self.samples]

    def sample(self, index):
        """Subject of the index-th sample face."""
        if not 0 <= index < len(self.samples):
            raise UserError(f'no sample face {index}: there are {len(self.samples)}')
        name, crop = self.samples[index]
        face = face_crops.Face(name, crop)
        return Subject([face], self._own([face]), f'{name}: a held-out face ({self.size} px)')

    def photo(self, path, name=None):
        """Subject of every face found in the photo at `path` (detected, aligned with the model's framing).
        `name`: the file's name as uploaded. Raises UserError: not an image, no face, no detector."""
        name = name or os.path.basename(path)
        try:
            pixels = face_crops.load_photo(path)
        except DataError as e:
            why = e.problem.removeprefix('cannot read image: ').replace(f"'{path}'", name).replace(path, name)
            raise UserError(f'{name}: not an image this page can read ({why})') from None
        notes = []
        h, w = pixels.shape[:2]
        if max(h, w) > MAX_SIDE:
            pixels = face_crops.fit_within(pixels, MAX_SIDE)
            notes.append(f'scaled down from {w}x{h} to {pixels.shape[1]}x{pixels.shape[0]} (the page\'s limit: '
                         f'{MAX_SIDE} px on the longer side)')
        stem = os.path.splitext(name)[0]
        photo = face_crops.Photo(stem, path, pixels)
        face_framing = framing.of_model(SimpleNamespace(face_framing='auto'), self.config)
        found = face_crops.find_faces(pixels, face_framing, self.size, why='a photo in the face editor')
        if not found:
            raise UserError(f'{name}: no face found (the detector finds faces from about 16 px; the photo is '
                            f'{pixels.shape[1]}x{pixels.shape[0]})')
        faces = [face_crops.Face(f'{stem}_face{k}', framing.warp_crop(pixels, m, self.size), photo, m, d.points, d.box)
                 for k, (d, m) in enumerate(found, 1)]
        notes.insert(0, f'{name}: {len(faces)} face{"s" * (len(faces) > 1)} found, aligned and edited together'
                        + ('; the sliders start from the first face\'s AUs' if len(faces) > 1 else ''))
        return Subject(faces, self._own(faces), '; '.join(notes), photo)

    def _own(self, faces):
        """(N, c_dim) the faces' own AUs in 0-5 (critic, else the AU reader, else 0); zeros for GANmut."""
        if self.model == 'ganmut':
            return np.zeros((len(faces), 0))
        return animate.own_aus(self.source, self.D, self._float(faces), faces, self.label_names,
                               self.device).numpy() * 5

    def _float(self, faces, side=None):
        x = images_to_float(torch.from_numpy(np.stack([f.crop for f in faces])), self.device, torch.contiguous_format)
        if side and side < x.shape[-1]:
            x = F.interpolate(x, size=(side, side), mode='area')
        return x

    # ------------------------------------------------------------------ one edit
    @torch.no_grad()
    def _generate(self, subject, conds, preview=False):
        """Every face of `subject` through G at its row of conds (N, dim) -> Edited. A preview runs the
        generator on the faces brought to PREVIEW_SIDE px and scales its output back up."""
        start = time.perf_counter()
        side = PREVIEW_SIDE if preview and self.size > PREVIEW_SIDE else None
        x = self._float(subject.faces, side)
        c = torch.as_tensor(conds, dtype=torch.float32).to(self.device)
        src = None
        if self.model == 'ganimation' and self.G.relative:
            src = torch.from_numpy(subject.own / 5).float().to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            y, attn, _ = self.G(x, c, src)
        if side:
            y = F.interpolate(y.float(), size=(self.size, self.size), mode='bilinear', align_corners=False)
            attn = None if attn is None else F.interpolate(attn.float(), size=(self.size, self.size), mode='nearest')
        crops = vis.to_uint8(y)
        masks = None if attn is None else vis.to_uint8(attn * 2 - 1)
        if subject.photo is not None:
            image = face_crops.composite(subject.faces, list(range(len(subject.faces))), crops)
        else:
            image = crops[0]
        mask = None if masks is None else np.concatenate(list(masks), 1)
        if mask is not None and mask.ndim == 3 and mask.shape[-1] == 1:
            mask = np.repeat(mask, 3, -1)
        return Edited(image, mask, time.perf_counter() - start)

    def edit_aus(self, subject, aus, preview=False):
        """GANimation: the AUs of the sliders (c_dim values in 0-5). One face plays them as they are; with
        several faces (a photo), the AUs moved away from the first face's own are set on every face and
        the others keep each face's own."""
        aus = np.clip(np.asarray(aus, dtype=np.float64), 0, 5)
        if aus.shape != (len(self.label_names),):
            raise UserError(f'{aus.size} AU values for a model of {len(self.label_names)} AUs')
        moved = np.abs(aus - subject.own[0]) > 1e-6
        conds = subject.own.copy()
        conds[:, moved] = aus[moved]
        conds[0] = aus
        return self._generate(subject, conds / 5, preview)

    def preset(self, emotion):
        """The sliders of an emotion's prototype at PRESET_INTENSITY (AUs the model lacks are left out)."""
        full = sf.emotion_prototype(emotion, PRESET_INTENSITY)
        return np.array([full[sf.AU_INDEX[n]] for n in self.label_names])

    # ------------------------------------------------------------------ GANmut
    def plane(self, code=None):
        """The learned plane with the emotions' axes or means and names; a cross at `code` when given."""
        img = Image.fromarray(gv.plane_plot(self.space, PLANE_SIDE, lim=PLANE_LIM))
        if code is not None:
            from PIL import ImageDraw
            px, py = gv.plane_pixel(PLANE_SIDE, float(code[0]), float(code[1]), lim=PLANE_LIM)
            d = ImageDraw.Draw(img)
            for r, colour in ((7, (255, 255, 255)), (5, (0, 0, 0))):
                d.line([(px - r, py), (px + r, py)], fill=colour, width=3 if r == 7 else 1)
                d.line([(px, py - r), (px, py + r)], fill=colour, width=3 if r == 7 else 1)
        return np.asarray(img)

    def code_at(self, px, py):
        """The plane's point under pixel (px, py) of plane(): (x, y) codes, further dimensions 0."""
        x, y = gv.plane_point(PLANE_SIDE, px, py, lim=PLANE_LIM)
        return np.array([x, y] + [0.0] * (self.space.dim - 2))

    def edit_code(self, subject, point, intensity=1.0, preview=False):
        """GANmut: every face at code = intensity x the point clicked (0: the face as it is read neutral)."""
        code = np.asarray(point, dtype=np.float64) * float(intensity)
        out = self._generate(subject, np.repeat(code[None], len(subject.faces), 0), preview)
        out.extra['code'] = code
        out.extra['nearest'] = self.space.names[int(ganmut_edit.nearest_emotion(
            self.space, torch.as_tensor(code[None], dtype=torch.float32, device=self.device))[0])]
        return out

    def wheel(self, subject, frames=48, fps=10, progress=None):
        """GANmut: the faces once around the plane -> (GIF path, MP4 path or None)."""
        codes, _, _ = ganmut_edit.wheel_codes(SimpleNamespace(rho=None, theta=None), self.space, frames)
        return self._animation(subject, codes.float(), fps, 'wheel', progress=progress)

    # ------------------------------------------------------------------ animations
    def sequence_of_file(self, path, name=None):
        """An AU sequence file (an AU table .txt, or an OpenFace .csv) -> (T, c_dim) in 0-5."""
        name = name or os.path.basename(path)
        cfg = SimpleNamespace(test_attributes_path=path, test_reference_dir=os.path.dirname(path))
        try:
            seq, _ = animate._sequence_of_flags(cfg, self.label_names, self.size)
        except UserError as e:
            raise UserError(f'{name}: {e}'.replace(f'{path}: ', '').replace(path, name)) from None
        except Exception as e:
            raise UserError(f'{name}: not an AU sequence this page can read ({e})') from None
        return np.asarray(seq[:MAX_VIDEO_FRAMES], dtype=np.float64)

    def sequence_of_video(self, path, name=None, progress=None, log=print):
        """The AUs of the largest face of each frame of a video (the AU reader) -> ((T, c_dim), fps,
        that face's crops (T, REFERENCE_SIDE, REFERENCE_SIDE, 3), shown beside the animation)."""
        name = name or os.path.basename(path)
        try:
            read = au_reader.read_video(path, 'a driving video in the face editor', crop_size=REFERENCE_SIDE, log=log,
                                        progress=progress, max_frames=MAX_VIDEO_FRAMES)
        except UserError as e:
            raise UserError(str(e).replace(path, name)) from None
        cols = [sf.AU_INDEX[n] for n in self.label_names]
        return read.aus[:, cols], read.fps, read.faces

    def animate(self, subject, seq, fps, refs=None, progress=None):
        """GANimation: the faces playing the AU sequence seq (T, c_dim) in 0-5 -> (GIF, MP4 or None)."""
        return self._animation(subject, torch.from_numpy(np.asarray(seq) / 5).float(), fps, 'animated', refs,
                               progress)

    @torch.no_grad()
    def _animation(self, subject, conds, fps, what, refs=None, progress=None, batch=16):
        """Frames of every face at each row of conds, pasted back into the photo when there is one;
        the reference frames (the driving video's face) on the left when given."""
        x = self._float(subject.faces)
        per_face = [[] for _ in subject.faces]
        for s in range(0, len(conds), batch):
            for i, xi in enumerate(x):
                src = torch.from_numpy(subject.own[i] / 5).float() if self.model == 'ganimation' and self.G.relative \
                    else None
                frames, _ = animate.generate(self.G, xi, conds[s:s + batch], self.device, self.amp, batch, src)
                per_face[i].append(frames)
            if progress:
                progress(min(1.0, (s + batch) / len(conds)), 'frames')
        per_face = [np.concatenate(f) for f in per_face]
        if subject.photo is not None:
            _, frames, sbs = next(face_crops.animated_photos(subject.faces, per_face, refs, ANIMATION_SIDE))
            frames = sbs if sbs is not None else frames
        else:
            frames = [enlarged(f) for f in per_face[0]]
            frames = [face_crops.side_by_side(r, f) for r, f in zip(refs, frames)] if refs is not None else frames
        os.makedirs(self.results_dir, exist_ok=True)
        stem = f'{time.strftime("%Y%m%d_%H%M%S")}_{subject.faces[0].name}_{what}'
        paths = animate.save_animation(frames, os.path.join(self.results_dir, f'{stem}.gif'), fps, 'auto')
        return paths[0], (paths[1] if len(paths) > 1 else None)


def time_edits(repeats=20, size=128, conv_dim=64, repeat_num=6, threads=None):
    """Seconds of one slider edit of one face with the paper-size generator (fp32, weights as initialised):
    (median full edit, median preview). The same code path as the page's (Editor._generate)."""
    if threads:
        torch.set_num_threads(threads)
    config = dict(image_size=size, g_conv_dim=conv_dim, g_repeat_num=repeat_num)
    trained = Trained('(weights as initialised)', dict(config=config, label_names=sf.AU_NAMES, model='ganimation',
                                                       iteration=0, G=Generator(conv_dim, 17, repeat_num).state_dict()))
    editor = Editor(trained, device='cpu', amp='off', num_faces=1)      # its face: rendered (no data)
    subject = editor.sample(0)
    aus = sf.emotion_prototype('happy', 4.0)
    out = {}
    for preview in (False, True):
        for _ in range(3):
            editor.edit_aus(subject, aus, preview)
        out[preview] = float(np.median([editor.edit_aus(subject, aus, preview).seconds for _ in range(repeats)]))
    return out[False], out[True]


def main(argv=None):
    p = argparse.ArgumentParser(description='time one slider edit of the face editor (docs/app.md)')
    p.add_argument('--time', action='store_true', required=True)
    p.add_argument('--repeats', type=int, default=20)
    p.add_argument('--image_size', type=int, default=128)
    a = p.parse_args(argv)
    from utils.runtime import cpu_kind
    full, preview = time_edits(a.repeats, a.image_size)
    print(f'one slider edit, {a.image_size} px face, paper-size generator (64 channels, 6 blocks), fp32, '
          f'{torch.get_num_threads()} threads, CPU kind {cpu_kind()}: {full * 1000:.0f} ms '
          f'(preview at {PREVIEW_SIDE} px: {preview * 1000:.0f} ms), median of {a.repeats}')


if __name__ == '__main__':
    main()
