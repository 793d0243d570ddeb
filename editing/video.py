"""Videos in and out: frames read and written by the ffmpeg binary that the `imageio-ffmpeg` wheel ships
(an optional dependency, requirements-extras.txt)."""
from __future__ import annotations

import os

import numpy as np

from utils.errors import UserError

VIDEO_EXTENSIONS = ('.mp4', '.mov', '.avi', '.mkv', '.webm', '.m4v')
INSTALL_HINT = 'pip install imageio-ffmpeg (in requirements-extras.txt)'


def is_video(path):
    return os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS)


def ffmpeg(why):
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UserError(f'{why} needs imageio-ffmpeg to read videos: {INSTALL_HINT}') from None
    return imageio_ffmpeg


def frames(path, why='reading a video'):
    """(iterator of (H, W, 3) uint8 RGB frames, frames per second, frame count as the container says)."""
    if not os.path.isfile(path):
        raise UserError(f'{path}: no such video file')
    ff = ffmpeg(why)
    try:
        reader = ff.read_frames(path)
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration) as e:
        raise UserError(f'{path}: cannot read the video ({str(e).splitlines()[0] if str(e) else "no frames"})') \
            from None
    w, h = meta['size']
    count = int(round(meta.get('duration', 0) * meta.get('fps', 0)))

    def each():
        for raw in reader:
            yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
    return each(), float(meta.get('fps') or 25.0), count


def write(frames_, path, fps, why='writing a video'):
    """Frames (an iterable of (H, W, 3) uint8) -> an H.264 MP4 at `fps` (yuv420p needs even sides: an odd
    last row or column is repeated). Returns (path, frames written)."""
    ff = ffmpeg(why)
    partial = os.path.splitext(path)[0] + '.partial.mp4'   # renamed when complete: no half-written video
    writer, n = None, 0
    for frame in frames_:
        h, w = frame.shape[:2]
        if writer is None:
            size = (w + w % 2, h + h % 2)
            writer = ff.write_frames(partial, size, fps=fps, macro_block_size=2, ffmpeg_log_level='error')
            writer.send(None)
        if (w, h) != size:
            frame = np.pad(frame, ((0, size[1] - h), (0, size[0] - w), (0, 0)), mode='edge')
        writer.send(np.ascontiguousarray(frame))
        n += 1
    if writer is None:
        raise UserError(f'{path}: no frames to write')
    writer.close()
    os.replace(partial, path)
    return path, n
