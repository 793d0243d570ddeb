"""Label files and image datasets for the three label formats of SPEC section 3.

- AU table (`.txt`): `<filename> <17 AU intensities>` per line, optional header lines.
- AU dict (`.pkl`): `{image_id: array(17)}` with `train_ids.csv` / `test_ids.csv` beside it,
  loaded by a restricted unpickler that never executes code.
- Emotion CSV (`.csv`): header `subDirectory_filePath,expression` (AffectNet / GANmut).

Every dataset keeps its labels in memory (`dataset.labels`), so the trainer
draws target AUs from the table without touching images. Images come out in
[-1, 1], CHW float32, at `image_size`; labels as AUs / 5 (float) or class index.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import pickle

import numpy as np
import torch
from PIL import Image

from synthetic_faces import AU_NAMES

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
AU_MAX = 5.0


class DataError(ValueError):
    """Bad input data; the message names the file (and line) and the problem."""

    def __init__(self, path, problem, line=None):
        where = f'{path}, line {line}' if line is not None else f'{path}'
        super().__init__(f'{where}: {problem}')
        self.path, self.line, self.problem = path, line, problem


# --------------------------------------------------------------------------- AU table (.txt)

def _is_float(tok):
    try:
        float(tok)
        return True
    except ValueError:
        return False


def read_au_table(path, num_aus=None):
    """Read an AU table. Returns (file names, AU names, intensities (N, A) float32 in [0, 5]).

    Header lines are recognised by content, only before the first data row: a
    lone integer (a row count, as in the CelebA file) or a line of names
    (`AU01 AU02 ...`, optionally after a first column title). Any other line
    that is not `<name> <A numbers>` is an error naming the file and line.
    """
    names, rows, au_names = [], [], None
    with open(path, 'r', encoding='utf-8', errors='replace') as f:
        for lineno, raw in enumerate(f, 1):
            toks = raw.split()
            if not toks:
                continue
            if not rows:   # still in the header zone
                if len(toks) == 1 and toks[0].isdigit():
                    continue
                if not any(_is_float(t) for t in toks[1:]) and not _is_float(toks[0]):
                    header = [t for t in toks if t.upper().startswith('AU')]
                    if header:
                        au_names = [t.upper().replace('_R', '') for t in header]
                    continue
            expected = len(au_names) if au_names else (num_aus or len(AU_NAMES))
            if len(toks) != expected + 1:
                raise DataError(path, f'expected a file name and {expected} AU values, found '
                                      f'{len(toks) - 1} value(s): {raw.strip()[:80]!r}', lineno)
            try:
                values = [float(t) for t in toks[1:]]
            except ValueError:
                bad = next(t for t in toks[1:] if not _is_float(t))
                raise DataError(path, f'AU value {bad!r} is not a number', lineno) from None
            values = np.asarray(values, dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise DataError(path, f'non-finite AU value in {raw.strip()[:80]!r}', lineno)
            if values.min() < -1e-3 or values.max() > AU_MAX + 1e-3:
                raise DataError(path, f'AU values must lie in [0, {AU_MAX:g}], found '
                                      f'{values.min():g}..{values.max():g}', lineno)
            names.append(toks[0])
            rows.append(np.clip(values, 0, AU_MAX))
    if not rows:
        raise DataError(path, 'no label rows found')
    return names, (au_names or list(AU_NAMES[:len(rows[0])])), np.stack(rows).astype(np.float32)


# --------------------------------------------------------------------------- AU dict (.pkl)

class _RestrictedUnpickler(pickle.Unpickler):
    """Admits plain containers and numpy arrays/scalars; anything else is refused."""
    ALLOWED = {
        ('builtins', 'dict'), ('builtins', 'list'), ('builtins', 'tuple'), ('builtins', 'set'),
        ('builtins', 'float'), ('builtins', 'int'), ('builtins', 'str'), ('builtins', 'bytes'),
        ('collections', 'OrderedDict'), ('_codecs', 'encode'),   # protocol 2 writes bytes through encode
        ('numpy', 'ndarray'), ('numpy', 'dtype'),
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
        ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'refusing to load {module}.{name} (only containers and numpy arrays)')


def safe_unpickle(path):
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except Exception as e:   # corrupt file or forbidden object
        raise DataError(path, f'cannot load label pickle: {e}') from None


def read_au_pickle(path, num_aus=None):
    """Read an AU dict. Returns (image ids, AU names, intensities (N, A) float32)."""
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(path, f'expected a dict {{image_id: AU array}}, found {type(obj).__name__}')
    expected = num_aus or len(AU_NAMES)
    ids, rows = [], []
    for key, value in obj.items():
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if arr.shape[0] != expected:
            raise DataError(path, f'entry {key!r}: expected {expected} AU values, found {arr.shape[0]}')
        if not np.all(np.isfinite(arr)) or arr.min() < -1e-3 or arr.max() > AU_MAX + 1e-3:
            raise DataError(path, f'entry {key!r}: AU values must be finite and in [0, {AU_MAX:g}]')
        ids.append(str(key))
        rows.append(np.clip(arr, 0, AU_MAX))
    if not rows:
        raise DataError(path, 'the AU dict is empty')
    return ids, list(AU_NAMES[:expected]), np.stack(rows).astype(np.float32)


def read_id_list(path):
    """One image file name per line (train_ids.csv / test_ids.csv)."""
    with open(path, encoding='utf-8') as f:
        return [line.strip().split(',')[0] for line in f if line.strip()]


# --------------------------------------------------------------------------- emotion CSV

def read_emotion_csv(path, c_dim):
    """Read `subDirectory_filePath,expression`. Keeps rows with 0 <= expression < c_dim
    (AffectNet's 8 None, 9 Uncertain, 10 No-Face and classes past c_dim are dropped).
    Returns (image base names, class indices int64)."""
    names, labels = [], []
    with open(path, newline='', encoding='utf-8-sig') as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(path, 'the file is empty')
        header = [h.strip() for h in header]
        if 'subDirectory_filePath' not in header or 'expression' not in header:
            raise DataError(path, f'header must name subDirectory_filePath and expression, found {header}', 1)
        i_path, i_expr = header.index('subDirectory_filePath'), header.index('expression')
        for lineno, row in enumerate(reader, 2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) <= max(i_path, i_expr):
                raise DataError(path, f'expected {len(header)} columns, found {len(row)}', lineno)
            try:
                expr = int(float(row[i_expr]))
            except ValueError:
                raise DataError(path, f'expression {row[i_expr]!r} is not an integer', lineno) from None
            if 0 <= expr < c_dim:
                names.append(os.path.basename(row[i_path].strip().replace('\\', '/')))
                labels.append(expr)
    if not names:
        raise DataError(path, f'no rows with an expression in [0, {c_dim})')
    return names, np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------- images

def load_image(path, image_size):
    """Any image file -> (S, S, 3) uint8 RGB. Grey, palette and RGBA are converted."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == 'RGBA' or im.mode == 'LA' or (im.mode == 'P' and 'transparency' in im.info):
                rgba = im.convert('RGBA')
                im = Image.new('RGB', rgba.size, (255, 255, 255))
                im.paste(rgba, mask=rgba.split()[3])
            else:
                im = im.convert('RGB')
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BICUBIC if min(im.size) < image_size
                               else Image.LANCZOS)
            return np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(path, 'image file not found') from None
    except Exception as e:
        raise DataError(path, f'cannot read image: {e}') from None


def to_tensor(images_uint8):
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [-1, 1]."""
    x = torch.as_tensor(images_uint8)
    return x.movedim(-1, -3).float().div_(127.5).sub_(1.0)


def _index_image_dir(image_dir):
    try:
        files = os.listdir(image_dir)
    except OSError as e:
        raise DataError(image_dir, f'cannot list the image folder: {e}') from None
    by_stem = {}
    for fn in files:
        stem, ext = os.path.splitext(fn)
        if ext.lower() in IMAGE_EXTENSIONS:
            by_stem.setdefault(stem, fn)
    return set(files), by_stem


class LabelledImages(torch.utils.data.Dataset):
    """Images with labels held in memory.

    `labels` is an (N, A) float32 tensor of AUs / 5, or an (N,) int64 tensor of classes.
    """

    def __init__(self, image_dir, names, labels, image_size, label_path='', label_names=None):
        self.image_dir, self.image_size, self.label_path = image_dir, image_size, label_path
        self.label_names = label_names
        files, by_stem = _index_image_dir(image_dir)
        resolved, missing = [], []
        for name in names:
            if name in files:
                resolved.append(name)
            elif os.path.splitext(name)[0] in by_stem:
                resolved.append(by_stem[os.path.splitext(name)[0]])
            elif name in by_stem:            # AU-dict ids have no extension
                resolved.append(by_stem[name])
            else:
                missing.append(name)
        if missing:
            raise DataError(label_path, f'{len(missing)} labelled image(s) have no file in {image_dir}, '
                                        f'e.g. {os.path.join(image_dir, missing[0])}')
        if not resolved:
            raise DataError(label_path, 'the dataset is empty')
        self.files = resolved
        self.labels = torch.as_tensor(labels)

    def __len__(self):
        return len(self.files)

    def path(self, i):
        return os.path.join(self.image_dir, self.files[i])

    def load_uint8(self, i):
        return load_image(self.path(i), self.image_size)

    def __getitem__(self, i):
        return to_tensor(self.load_uint8(i)), self.labels[i]


def select_aus(requested, available):
    """Column indices of `requested` AU names (e.g. ['AU12', 'AU25']) within `available`."""
    norm = {n.upper(): i for i, n in enumerate(available)}
    idx = []
    for name in requested:
        key = name.strip().upper()
        if key.isdigit():
            key = f'AU{int(key):02d}'
        if key not in norm:
            raise ValueError(f'--aus: unknown AU {name!r}; available: {" ".join(available)}')
        idx.append(norm[key])
    if len(set(idx)) != len(idx):
        raise ValueError(f'--aus: an AU is named twice in {requested}')
    return idx


def _split_file(label_path, split):
    path = os.path.join(os.path.dirname(os.path.abspath(label_path)), f'{split}_ids.csv')
    return path if os.path.exists(path) else None


def au_dataset(image_dir, attr_path, image_size, split='train', aus=None):
    """GANimation dataset from an AU table (.txt) or AU dict (.pkl).

    `split`: 'train' / 'test' use `train_ids.csv` / `test_ids.csv` beside the
    label file when present (the synthetic data holds its evaluation identities
    out that way); without such a file every row is used; 'all' uses every row.
    `aus`: optional list of AU names to keep (the condition then has that many entries).
    """
    if attr_path.lower().endswith('.pkl'):
        names, au_names, values = read_au_pickle(attr_path)
    else:
        names, au_names, values = read_au_table(attr_path)
    if split != 'all':
        ids_path = _split_file(attr_path, split)
        if ids_path:
            keep = {os.path.splitext(n)[0] for n in read_id_list(ids_path)}
            mask = [os.path.splitext(n)[0] in keep for n in names]
            names = [n for n, m in zip(names, mask) if m]
            values = values[np.asarray(mask, dtype=bool)]
            if not names:
                raise DataError(ids_path, f'no image of the {split} list has labels in {attr_path}')
    if aus:
        idx = select_aus(aus, au_names)
        values, au_names = values[:, idx], [au_names[i] for i in idx]
    return LabelledImages(image_dir, names, values / AU_MAX, image_size, attr_path, au_names)


def emotion_dataset(image_dir, csv_path, image_size, c_dim):
    """GANmut dataset from an emotion CSV."""
    names, labels = read_emotion_csv(csv_path, c_dim)
    return LabelledImages(image_dir, names, labels, image_size, csv_path)


# --------------------------------------------------------------------------- fast path: uint8 cache

def _cache_key(dataset):
    """Changes whenever an image file, the file list, the labels or the image size changes.

    The cache holds only pixels, but a change of the labels rebuilds it too: a relabelled
    dataset is a new dataset, and nothing stale can then be paired with the new labels.
    """
    h = hashlib.sha1(f'v2 {dataset.image_size}\n'.encode())
    for fn in dataset.files:
        st = os.stat(os.path.join(dataset.image_dir, fn))
        h.update(f'{fn} {st.st_size} {st.st_mtime_ns}\n'.encode())
    h.update(np.ascontiguousarray(dataset.labels.numpy()).tobytes())
    return h.hexdigest()[:16]


def _cache_prefix(dataset):
    """One cache per (image folder, label file, size): the AU and emotion views of a folder
    keep their own files and do not evict each other."""
    label = hashlib.sha1(os.path.abspath(dataset.label_path or '').encode()).hexdigest()[:6]
    return f'{os.path.basename(os.path.abspath(dataset.image_dir))}_{dataset.image_size}px_{label}_'


def uint8_cache(dataset, cache_dir=None, verbose=True):
    """All images decoded once into an (N, S, S, 3) uint8 memory-mapped file.

    The file lies beside the image folder (`<image_dir>/../.cache/`), or in
    `cache_dir` when given; its name carries a hash of the file list, sizes,
    modification times, labels and image size, so any change builds a new one
    (and removes the stale one).
    """
    cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(dataset.image_dir)), '.cache')
    prefix = _cache_prefix(dataset)
    n, s = len(dataset), dataset.image_size
    path = os.path.join(cache_dir, f'{prefix}{_cache_key(dataset)}.u8')
    if os.path.exists(path) and os.path.getsize(path) == n * s * s * 3:
        return np.memmap(path, dtype=np.uint8, mode='c', shape=(n, s, s, 3))  # copy-on-write: writable view, file untouched
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    arr = np.memmap(tmp, dtype=np.uint8, mode='w+', shape=(n, s, s, 3))
    if verbose:
        print(f'decoding {n} images once into {path}', flush=True)
    for i in range(n):
        arr[i] = dataset.load_uint8(i)
    arr.flush()
    del arr
    os.replace(tmp, path)
    for old in os.listdir(cache_dir):   # older versions of this cache
        if old.startswith(prefix) and old.endswith('.u8') and old != os.path.basename(path):
            try:
                os.remove(os.path.join(cache_dir, old))
            except OSError:
                pass
    return np.memmap(path, dtype=np.uint8, mode='c', shape=(n, s, s, 3))  # copy-on-write: writable view, file untouched


def batch_indices(num_items, batch_size, iteration, seed):
    """Indices of the batch of `iteration`: epoch e = iteration // batches_per_epoch
    is a permutation seeded by (seed, e). A pure function of the iteration, so a
    resumed run reads exactly the batches the uninterrupted run would have read."""
    batch_size = min(batch_size, num_items)
    per_epoch = num_items // batch_size
    epoch, pos = divmod(iteration, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_items, generator=g)
    return perm[pos * batch_size:(pos + 1) * batch_size]


class ResumableBatchSampler(torch.utils.data.Sampler):
    """batch_indices() for iterations start..stop-1, for a DataLoader with workers."""

    def __init__(self, num_items, batch_size, seed, start, stop):
        self.args = num_items, batch_size, seed
        self.start, self.stop = start, stop

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        n, b, seed = self.args
        for it in range(self.start, self.stop):
            yield batch_indices(n, b, it, seed).tolist()
