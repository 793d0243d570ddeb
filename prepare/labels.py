"""Who is in a crop (for the held-out split) and which emotion a photo shows (--source_labels).

Identity: --identity_regex on the source's file name (default: LFW-style `George_W_Bush_0001`, the name
without its trailing number), else the source video, else the photo itself. The split puts every
identity wholly in train or in test, test taking about --test_fraction of the crops.

Emotions: a CSV with a column naming the image file (`image`, `file`, `filename` or `path`) and an
`emotion` column, names in any case (`happiness`, `HAPPINESS`, `Happy`, `sad`) or AffectNet's codes
(0 neutral ... 7 contempt, the order GANmut trains on). A name outside the eight is counted and
reported, not guessed.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter

import numpy as np

from data_loader import DataError, read_lines
from synthetic_faces import EMOTIONS

DEFAULT_IDENTITY = r'(.+?)_\d+'      # LFW: Name_Surname_0001 -> Name_Surname
FILE_COLUMNS = ('image', 'file', 'filename', 'path')
# Every spelling of the eight emotions seen in public datasets, lower case -> the EMOTIONS name.
SYNONYMS = {'neutral': 'neutral', 'neutrality': 'neutral', 'calm': 'neutral',
            'happy': 'happy', 'happiness': 'happy', 'joy': 'happy',
            'sad': 'sad', 'sadness': 'sad',
            'surprise': 'surprise', 'surprised': 'surprise',
            'fear': 'fear', 'fearful': 'fear', 'afraid': 'fear',
            'disgust': 'disgust', 'disgusted': 'disgust',
            'anger': 'anger', 'angry': 'anger',
            'contempt': 'contempt', 'contemptuous': 'contempt'}


def identity_of(source, regex=DEFAULT_IDENTITY):
    """The identity of a source's crops: the regex's first group (or whole match) on the file name
    without extension when it matches the whole name; else the video's name; else the photo's."""
    stem = os.path.splitext(os.path.basename(source.path))[0]
    if regex:
        m = re.fullmatch(regex, stem)
        if m:
            return 'id:' + (m.group(1) if m.groups() else m.group(0))
    return f'{source.kind}:{source.name}'


def split_by_identity(identities, test_fraction, seed=0):
    """Boolean array, True where a sample is held out: whole identities, drawn in a seeded order, until
    the held-out share reaches test_fraction (an identity that would overshoot the target by more than
    half its size is passed over for a smaller one). With two or more identities and test_fraction > 0
    at least one is held out and at least one kept."""
    identities = list(identities)
    counts = Counter(identities)
    names = sorted(counts)
    target = test_fraction * len(identities)
    order = np.random.default_rng(seed).permutation(len(names))
    held, total = set(), 0
    for i in order:
        n = counts[names[i]]
        if total >= target:
            break
        if total + n - target > n / 2 and held:
            continue
        held.add(names[i])
        total += n
    if test_fraction > 0 and len(names) >= 2 and not held:
        held.add(names[order[0]])
    if len(held) == len(names) and len(names) >= 2:
        held.discard(names[order[-1]])
    return np.array([i in held for i in identities], dtype=bool)


def emotion_index(text):
    """The EMOTIONS index of a label cell, or None when it is not one of the eight."""
    t = text.strip()
    if re.fullmatch(r'\d+', t):
        k = int(t)
        return k if k < len(EMOTIONS) else None
    name = SYNONYMS.get(t.lower())
    return None if name is None else EMOTIONS.index(name)


def read_source_labels(path):
    """--source_labels -> ({file name (lower case): (EMOTIONS index or None, the cell, line)}, [(line,
    problem)]). A file labelled twice keeps its first row (the second is reported; with another emotion
    the file has no label). A CSV without the two columns is an error naming it."""
    reader = csv.reader(read_lines(path, 'labels CSV'))
    header = next(reader, None)
    if header is None:
        raise DataError(path, 'the file is empty')
    low = [h.strip().lower() for h in header]
    file_col = next((low.index(c) for c in FILE_COLUMNS if c in low), None)
    if file_col is None or 'emotion' not in low:
        raise DataError(path, f'the header must name the image file ({", ".join(FILE_COLUMNS)}) and emotion; '
                              f'found {", ".join(h.strip() for h in header)}', 1)
    emo_col = low.index('emotion')
    rows, problems = {}, []
    for line, row in enumerate(reader, 2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) <= max(file_col, emo_col):
            problems.append((line, f'expected {len(header)} columns, found {len(row)}'))
            continue
        name = os.path.basename(row[file_col].strip().replace('\\', '/')).lower()
        label = (emotion_index(row[emo_col]), row[emo_col].strip(), line)
        if name in rows:
            first = rows[name]
            if first[0] == label[0]:
                problems.append((line, f'{row[file_col].strip()} labelled again (line {first[2]}), the same emotion'))
            else:
                problems.append((line, f'{row[file_col].strip()} labelled {label[1]!r} here and {first[1]!r} on '
                                       f'line {first[2]}: left unlabelled'))
                rows[name] = (None, f'{first[1]} / {label[1]}', first[2])
            continue
        rows[name] = label
    return rows, problems
