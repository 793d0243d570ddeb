"""Read OpenFace's CSV output: FaceLandmarkImg (one file per image, a row per face) and
FeatureExtraction (one file per video, a row per frame and face).

Columns are found by name, in any order, with ", " or "," separators and any extra
columns. The 17 AU intensities come from the `AUxx_r` columns, in the order of synthetic_faces.AU_NAMES.
A row is dropped when `success` is 0 (FeatureExtraction: tracking failed), when its
`confidence` is below the threshold (the original GANimation code used 0.88) or when an AU value is not
finite; the table counts why. Anything else that is wrong is an error naming the file,
the line and the problem.
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from data_loader import DataError
from utils.text import read_lines

AU_NAMES = ['AU01', 'AU02', 'AU04', 'AU05', 'AU06', 'AU07', 'AU09', 'AU10', 'AU12',
            'AU14', 'AU15', 'AU17', 'AU20', 'AU23', 'AU25', 'AU26', 'AU45']
AU_MAX = 5.0
MIN_CONFIDENCE = 0.88
IMAGE, VIDEO = 'image', 'video'
ALIGNED_EXTENSIONS = ('.jpg', '.bmp', '.png', '.jpeg')
REASONS = {
    'success': 'success 0 (no face tracked)',
    'confidence': 'confidence below {threshold:g}',
    'nonfinite': 'non-finite AU value',
    'no_image': 'no aligned face image (OpenFace skips them with -nobadaligned)',
}


@dataclass
class Row:
    line: int                 # line number in the CSV (the header is line 1)
    face: int                 # FaceLandmarkImg: `face` index; FeatureExtraction: `face_id`
    frame: int | None         # FeatureExtraction: `frame` (1-based); None for images
    timestamp: float | None
    confidence: float
    aus: np.ndarray           # (17,) float32 intensities in [0, 5], in AU_NAMES order
    centre: tuple | None = None   # the mean of the 2-D landmarks (x_0..x_67, y_0..y_67) in pixels, if written


@dataclass
class OpenFaceTable:
    path: str
    layout: str               # IMAGE or VIDEO
    rows: list = field(default_factory=list)      # kept rows
    total: int = 0                                 # data rows read
    dropped: Counter = field(default_factory=Counter)
    clipped: int = 0                               # AU values moved into [0, 5]
    min_confidence: float = MIN_CONFIDENCE

    def describe_drops(self):
        return ', '.join(f'{n} {REASONS[k].format(threshold=self.min_confidence)}'
                         for k, n in sorted(self.dropped.items()) if n)


def _number(path, line, name, text):
    try:
        return float(text)
    except ValueError:
        raise DataError(path, f'column {name}: {text.strip()[:40]!r} is not a number', line) from None


def read_openface_csv(path, min_confidence=MIN_CONFIDENCE):
    """Parse one OpenFace CSV into an OpenFaceTable (kept rows and the reasons for the others)."""
    reader = csv.reader(read_lines(path, 'OpenFace CSV'), skipinitialspace=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise DataError(path, f'not a readable CSV: {e}', 1) from None
    if header is None or not any(h.strip() for h in header):
        raise DataError(path, 'the file is empty (no header line)', 1)
    header = [h.strip() for h in header]
    col = {}
    for i, h in enumerate(header):
        col.setdefault(h, i)
    if 'frame' in col:
        layout, id_col = VIDEO, 'face_id'
    elif 'face' in col or 'face_id' in col:
        layout, id_col = IMAGE, ('face' if 'face' in col else 'face_id')
    else:
        raise DataError(path, 'not an OpenFace CSV: the header has neither `face` (FaceLandmarkImg) nor '
                              f'`frame` (FeatureExtraction); it starts {", ".join(header[:6])}', 1)
    if 'confidence' not in col:
        raise DataError(path, 'the header has no `confidence` column', 1)
    missing = [f'{a}_r' for a in AU_NAMES if f'{a}_r' not in col]
    if missing:
        hint = (' (only presence columns *_c: intensities need OpenFace\'s -aus output)'
                if all(f'{m[:-2]}_c' in col for m in missing) else '')
        raise DataError(path, f'missing AU intensity column(s) {", ".join(missing)}{hint}', 1)
    au_cols = [col[f'{a}_r'] for a in AU_NAMES]
    xs, ys = ([col[k] for k in (f'{axis}_{i}' for i in range(68)) if k in col] for axis in 'xy')
    landmarks = len(xs) == len(ys) == 68
    table = OpenFaceTable(path, layout, min_confidence=min_confidence)
    for line, row in enumerate(reader, 2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(path, f'expected {len(header)} columns as in the header, found {len(row)}', line)
        table.total += 1
        get = (lambda name: _number(path, line, name, row[col[name]]))
        face = int(get(id_col)) if id_col in col else 0
        frame = int(get('frame')) if layout == VIDEO else None
        timestamp = get('timestamp') if 'timestamp' in col else None
        confidence = get('confidence')
        aus = np.array([_number(path, line, header[c], row[c]) for c in au_cols], dtype=np.float64)
        if 'success' in col and get('success') == 0:
            table.dropped['success'] += 1
        elif not (confidence >= min_confidence):      # NaN counts as low
            table.dropped['confidence'] += 1
        elif not np.all(np.isfinite(aus)):
            table.dropped['nonfinite'] += 1
        else:
            out = (aus < -1e-3) | (aus > AU_MAX + 1e-3)
            table.clipped += int(out.sum())
            centre = None
            if landmarks:
                centre = tuple(float(np.mean([_number(path, line, header[c], row[c]) for c in cols]))
                               for cols in (xs, ys))
            table.rows.append(Row(line, face, frame, timestamp, confidence,
                                  np.clip(aus, 0, AU_MAX).astype(np.float32), centre))
    return table


def aligned_dir(csv_path):
    """OpenFace's folder of aligned faces for a CSV: `<name>_aligned/` beside it."""
    return os.path.splitext(csv_path)[0] + '_aligned'


def aligned_image(csv_path, layout, face, frame=None):
    """Path of the aligned face of a row (face_det_000000.jpg for images,
    frame_det_00_000001.bmp for video frames, any of jpg/bmp/png), or None."""
    stem = f'face_det_{face:06d}' if layout == IMAGE else f'frame_det_{face:02d}_{frame:06d}'
    folder = aligned_dir(csv_path)
    for ext in ALIGNED_EXTENSIONS:
        p = os.path.join(folder, stem + ext)
        if os.path.isfile(p):
            return p
    return None


def sequence_from_csv(path, min_confidence=MIN_CONFIDENCE, face=None, log=print):
    """An AU sequence for test mode from an OpenFace CSV (a video's frames, or an image's faces).

    Returns (values (T, 17) float32 in [0, 5], reference frame paths or [] when not every
    kept row has an aligned image). A video with several people: `face` (default the
    lowest face_id with kept frames)."""
    table = read_openface_csv(path, min_confidence)
    rows = table.rows
    if table.layout == VIDEO:
        ids = sorted({r.face for r in rows})
        if ids:
            face = ids[0] if face is None else face
            rows = sorted((r for r in rows if r.face == face), key=lambda r: r.frame)
    if not rows:
        raise DataError(path, f'no row left for an AU sequence: {table.total} read, {table.describe_drops() or "none"}')
    paths = [aligned_image(path, table.layout, r.face, r.frame) for r in rows]
    paths = paths if all(paths) else []
    what = 'frame' if table.layout == VIDEO else 'face'
    if log:
        log(f'{path}: AU sequence of {len(rows)} {what}(s) of {table.total}'
            + (f' (face_id {face})' if table.layout == VIDEO else '')
            + (f'; dropped {table.describe_drops()}' if table.dropped else '')
            + (f'; reference frames from {aligned_dir(path)}/' if paths else '; no aligned frames beside it'))
    return np.stack([r.aus for r in rows]), paths
