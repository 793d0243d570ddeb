"""Gather OpenFace output into a dataset folder and AU sequences.

    OUT/images/<name>.jpg            aligned faces of the FaceLandmarkImg CSVs
    OUT/aus.txt                      AU table: `<name> <17 intensities>` per line (AU_NAMES order)
    OUT/aus_openface.pkl             {name without extension: float32 array(17)}
    OUT/train_ids.csv, test_ids.csv  the split, one image file name per line
    OUT/sequences/<video>.txt        a FeatureExtraction CSV as an AU sequence for test mode,
    OUT/sequences/<video>/...        with its aligned frames as the reference frames
    OUT/report.json                  what was kept and why the other rows were dropped

Names: `<image>.jpg` for face 0 of an image, `<image>_face<k>.jpg` for face k; a CSV in a
sub-folder of --openface_dir gets the sub-folder in front (`sub_<image>.jpg`). A video
with several people gives one sequence per face_id (`<video>_face<k>.txt` for k > 0).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import Counter

import numpy as np

from data_loader import DataError
from utils.errors import FlagError

from .openface_csv import IMAGE, MIN_CONFIDENCE, REASONS, aligned_dir, aligned_image, read_openface_csv


def find_csvs(openface_dir, skip=()):
    """OpenFace CSVs under openface_dir (recursively; `*_aligned/` folders and `skip` left out)."""
    skip = {os.path.abspath(s) for s in skip}
    out = []
    for root, dirs, files in os.walk(openface_dir):
        dirs[:] = sorted(d for d in dirs if not d.endswith('_aligned') and not d.startswith('.')
                         and os.path.abspath(os.path.join(root, d)) not in skip)
        out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith('.csv')]
    return out


def _stem(openface_dir, csv_path):
    rel = os.path.relpath(os.path.splitext(csv_path)[0], openface_dir)
    return rel.replace(os.sep, '_').replace('/', '_').replace(' ', '_')


def _fmt(aus):
    return ' '.join(f'{v:.2f}' for v in aus)


def split_ids(names, test_fraction, seed):
    """(train, test) lists of file names: a seeded permutation, round(test_fraction * n) in test
    (at least one when there are two or more images and test_fraction > 0)."""
    n = len(names)
    n_test = int(round(test_fraction * n))
    if test_fraction > 0 and n >= 2:
        n_test = min(max(1, n_test), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    test = sorted(names[i] for i in perm[:n_test])
    test_set = set(test)
    return [m for m in names if m not in test_set], test


def convert(openface_dir, out_dir, min_confidence=MIN_CONFIDENCE, test_fraction=0.1, seed=0, log=print):
    """Convert every OpenFace CSV under openface_dir. Returns the report (also OUT/report.json)."""
    if not os.path.isdir(openface_dir):
        raise DataError(openface_dir, 'no such folder (give the -out_dir that OpenFace wrote to)')
    if not 0 <= test_fraction < 1:
        raise FlagError(f'--test_fraction {test_fraction:g}: use a value in [0, 1)')
    csvs = find_csvs(openface_dir, skip=[out_dir])
    if not csvs:
        raise DataError(openface_dir, 'no OpenFace CSV found (FaceLandmarkImg and FeatureExtraction write '
                                      '<name>.csv beside <name>_aligned/)')
    tables = [read_openface_csv(p, min_confidence) for p in csvs]   # every file is checked before writing
    images_dir, seq_dir = os.path.join(out_dir, 'images'), os.path.join(out_dir, 'sequences')
    report = {'openface_dir': openface_dir, 'out_dir': out_dir, 'min_confidence': min_confidence,
              'images': {'csv_files': 0, 'rows': 0, 'kept': 0, 'dropped': Counter()},
              'videos': {'csv_files': 0, 'rows': 0, 'kept': 0, 'dropped': Counter()},
              'clipped_values': 0, 'sequences': []}
    labels, sources, taken = {}, {}, {}
    for table in tables:
        part = report['images' if table.layout == IMAGE else 'videos']
        part['csv_files'] += 1
        part['rows'] += table.total
        part['dropped'].update(table.dropped)
        report['clipped_values'] += table.clipped
        stem = _stem(openface_dir, table.path)
        if table.layout == IMAGE:
            for r in table.rows:
                src = aligned_image(table.path, IMAGE, r.face)
                if src is None:
                    part['dropped']['no_image'] += 1
                    continue
                name = f'{stem}{"" if r.face == 0 else f"_face{r.face}"}{os.path.splitext(src)[1].lower()}'
                key = os.path.splitext(name)[0]
                if key in taken:
                    raise DataError(table.path, f'face {r.face} would be saved as {name}, a name already taken by '
                                                f'{taken[key]}: rename one of the inputs', r.line)
                labels[name], sources[name] = r.aus, src
                taken[key] = f'{table.path}, line {r.line}'
                part['kept'] += 1
        else:
            report['sequences'] += _write_sequences(table, stem, seq_dir, part)
    if labels:
        _write_dataset(labels, sources, images_dir, out_dir, test_fraction, seed, report)
    for part in ('images', 'videos'):
        report[part]['dropped'] = dict(report[part]['dropped'])
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=1, default=str)
    if log:
        for line in describe(report):
            log(line)
    return report


def _write_dataset(labels, sources, images_dir, out_dir, test_fraction, seed, report):
    os.makedirs(images_dir, exist_ok=True)
    names = sorted(labels)
    for n in names:
        shutil.copyfile(sources[n], os.path.join(images_dir, n))
    with open(os.path.join(out_dir, 'aus.txt'), 'w') as f:
        for n in names:
            f.write(f'{n} {_fmt(labels[n])}\n')
    with open(os.path.join(out_dir, 'aus_openface.pkl'), 'wb') as f:
        pickle.dump({os.path.splitext(n)[0]: labels[n].astype(np.float32) for n in names}, f, protocol=2)
    train, test = split_ids(names, test_fraction, seed)
    for fn, ids in (('train_ids.csv', train), ('test_ids.csv', test)):
        with open(os.path.join(out_dir, fn), 'w') as f:
            f.writelines(f'{n}\n' for n in ids)
    report['images'].update(train=len(train), test=len(test))


def _write_sequences(table, stem, seq_dir, part):
    """One AU sequence per face_id of a video; returns their descriptions."""
    out = []
    has_frames = os.path.isdir(aligned_dir(table.path))
    for face in sorted({r.face for r in table.rows}):
        rows = sorted((r for r in table.rows if r.face == face), key=lambda r: r.frame)
        name = stem if face == 0 else f'{stem}_face{face}'
        lines, copies = [], []
        for r in rows:
            src = aligned_image(table.path, table.layout, r.face, r.frame) if has_frames else None
            if has_frames and src is None:
                part['dropped']['no_image'] += 1
                continue
            ext = os.path.splitext(src)[1].lower() if src else '.jpg'
            frame_name = f'{name}/frame_{r.frame:06d}{ext}'
            lines.append(f'{frame_name} {_fmt(r.aus)}\n')
            if src:
                copies.append((src, os.path.join(seq_dir, frame_name)))
        if not lines:
            continue
        os.makedirs(os.path.join(seq_dir, name), exist_ok=True)
        for src, dst in copies:
            shutil.copyfile(src, dst)
        path = os.path.join(seq_dir, f'{name}.txt')
        with open(path, 'w') as f:
            f.writelines(lines)
        part['kept'] += len(lines)
        out.append({'path': path, 'source': table.path, 'face_id': face, 'frames': len(lines),
                    'reference_frames': bool(copies)})
    return out


def describe(report):
    """Human-readable lines of a conversion report."""
    thr = report['min_confidence']
    lines = []
    for part, what in (('images', 'face'), ('videos', 'frame')):
        p = report[part]
        if not p['csv_files']:
            continue
        drops = '; '.join(f'{n} {REASONS[k].format(threshold=thr)}' for k, n in sorted(p['dropped'].items()) if n)
        lines.append(f'{part}: {p["csv_files"]} CSV file(s), {p["rows"]} {what} row(s): kept {p["kept"]}'
                     + (f', dropped {p["rows"] - p["kept"]}: {drops}' if p['rows'] > p['kept'] else ''))
    out = report['out_dir']
    if report['images']['kept']:
        p = report['images']
        lines.append(f'  -> {os.path.join(out, "images")}/ ({p["kept"]} aligned faces), {os.path.join(out, "aus.txt")}, '
                     f'aus_openface.pkl; split train_ids.csv ({p["train"]}) / test_ids.csv ({p["test"]}); '
                     f'train with: python main.py --mode train --dataset {out}')
    for s in report['sequences']:
        lines.append(f'  -> {s["path"]}: {s["frames"]} frames (face_id {s["face_id"]}'
                     + (', with reference frames' if s['reference_frames'] else ', no aligned frames')
                     + f'); animate with --test_attributes_path {s["path"]}')
    if report['clipped_values']:
        lines.append(f'note: {report["clipped_values"]} AU value(s) outside [0, 5] were clipped')
    if not report['images']['kept'] and not report['sequences']:
        lines.append('nothing was kept: check --min_confidence and that OpenFace wrote aligned faces (-simalign)')
    return lines
