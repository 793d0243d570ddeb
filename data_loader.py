"""Label files and image datasets for the three label formats (AU table, AU pickle, emotion CSV).

- AU table (`.txt`): `<filename> <17 AU intensities>` per line, optional header lines.
- AU dict (`.pkl`): `{image_id: array(17)}` with `train_ids.csv` / `test_ids.csv` beside it,
  loaded by a restricted unpickler that never executes code.
- Emotion CSV (`.csv`): header `subDirectory_filePath,expression` (AffectNet / GANmut).

Every dataset keeps its labels in memory (`dataset.labels`), so the trainer
draws target AUs from the table without touching images. Images come out in
[-1, 1], CHW float32, at `image_size`; labels as AUs / 5 (float) or class index.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
import pickle

import numpy as np
import torch
from PIL import Image

import synthetic_faces as sf
from synthetic_faces import AU_NAMES
from utils.errors import DataError, FlagError
from utils.text import read_lines

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
AU_MAX = 5.0


class BadData:
    """What happens to a bad image or label row (--on_bad_data): 'error' raises a DataError
    naming the file and line at the first one; 'skip' drops it and counts it by kind, for
    the report printed at start-up. Whole-file problems (an empty dataset, a missing
    header) are errors in both modes."""

    def __init__(self, mode='error'):
        if mode not in ('error', 'skip'):
            raise FlagError(f'--on_bad_data: expected error or skip, found {mode!r}')
        self.mode = mode
        self.skipped = {}          # message -> kind; repeated loads of one file count once

    def __call__(self, path, problem, line=None, kind=None):
        err = DataError(path, problem, line)
        if self.mode == 'error':
            raise err
        self.skipped.setdefault(str(err), kind or problem)

    def many(self, path, items, kind, summary):
        """A group of bad items found together (missing files, unlabelled images)."""
        if not items:
            return
        if self.mode == 'error':
            raise DataError(path, summary + ' (--on_bad_data skip drops them)')
        for item in items:
            self.skipped.setdefault(f'{path}: {kind}: {item}', kind)

    def report(self):
        """Lines for the start-up report ([] when nothing was skipped)."""
        if not self.skipped:
            return []
        by_kind = {}
        for message, kind in self.skipped.items():
            by_kind.setdefault(kind, []).append(message)
        lines = [f'--on_bad_data skip: {len(self.skipped)} bad item(s) skipped']
        for kind, messages in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
            lines.append(f'  {len(messages):6d} x {kind}; first: {messages[0]}')
        return lines


# The policy of this process; main.py sets it from --on_bad_data before any data is read.
BAD_DATA = BadData('error')


def set_bad_data_policy(mode):
    global BAD_DATA
    BAD_DATA = BadData(mode)
    return BAD_DATA


# --------------------------------------------------------------------------- AU table (.txt)

def _is_float(tok):
    try:
        float(tok)
        return True
    except ValueError:
        return False


def write_au_table(path, names, values, au_names=AU_NAMES):
    """The AU table read_au_table reads: a line of AU names after a first column title, then one
    `<name> <intensities, 0-5>` line per row. Written atomically."""
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write('name ' + ' '.join(au_names) + '\n')
        for name, row in zip(names, np.asarray(values, np.float64)):
            f.write(f'{name} ' + ' '.join(f'{v:.2f}' for v in np.clip(row, 0, 5)) + '\n')
    os.replace(tmp, path)
    return path


def read_au_table(path, num_aus=None):
    """Read an AU table. Returns (file names, AU names, intensities (N, A) float32 in [0, 5]).

    Header lines are recognised by content, only before the first data row: a
    lone integer (a row count, as in the CelebA file) or a line of names
    (`AU01 AU02 ...`, optionally after a first column title). Any other line
    that is not `<name> <A numbers in [0, 5]>`, and a name given twice, is an error
    naming the file and line, or with --on_bad_data skip a skipped row (BAD_DATA).
    """
    bad = BAD_DATA
    names, rows, au_names, seen = [], [], None, {}
    for lineno, raw in enumerate(read_lines(path, 'AU table'), 1):
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
        problem = _au_row_problem(toks, expected, raw)
        if problem:
            bad(path, problem[1], lineno, problem[0])
            continue
        if toks[0] in seen:
            bad(path, f'duplicate name {toks[0]!r} (first on line {seen[toks[0]]})', lineno, 'duplicate name')
            continue
        seen[toks[0]] = lineno
        names.append(toks[0])
        rows.append(np.clip(np.asarray([float(t) for t in toks[1:]]), 0, AU_MAX))
    if not rows:
        raise DataError(path, 'no valid label rows found')
    return names, (au_names or list(AU_NAMES[:len(rows[0])])), np.stack(rows).astype(np.float32)


def _au_row_problem(toks, expected, raw):
    """(kind, message) of what is wrong with one AU-table row, or None."""
    if len(toks) != expected + 1:
        return ('row with a wrong number of values', f'expected a file name and {expected} AU values, '
                f'found {len(toks) - 1} value(s): {raw.strip()[:80]!r}')
    bad = next((t for t in toks[1:] if not _is_float(t)), None)
    if bad is not None:
        return 'AU value not a number', f'AU value {bad!r} is not a number'
    return _au_values_problem(np.asarray([float(t) for t in toks[1:]]))


def _au_values_problem(values):
    if not np.all(np.isfinite(values)):
        return 'non-finite AU value', f'non-finite AU value (NaN or infinity) in {values.tolist()}'
    if values.min() < -1e-3 or values.max() > AU_MAX + 1e-3:
        return 'AU value out of range', (f'AU values must lie in [0, {AU_MAX:g}], found '
                                         f'{values.min():g}..{values.max():g}')
    return None


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
    """A label pickle through the restricted unpickler. Python 2 pickles (the original GANimation code's
    aus_openface.pkl) store text and numpy arrays' bytes as 8-bit strings: they are read as latin-1, which
    numpy needs for the arrays, and string keys are turned back into the UTF-8 text they were."""
    with open(path, 'rb') as f:
        data = f.read()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding='latin1').load()
    except Exception as e:   # corrupt file or forbidden object
        raise DataError(path, f'cannot load label pickle: {e}') from None
    return {_python2_text(k): v for k, v in obj.items()} if isinstance(obj, dict) else obj


def _python2_text(key):
    """A Python 2 string read as latin-1, as the UTF-8 text it held (unchanged if it was not UTF-8)."""
    if not isinstance(key, str):
        return key
    try:
        return key.encode('latin1').decode('utf-8')
    except (UnicodeEncodeError, UnicodeDecodeError):
        return key


def read_au_pickle(path, num_aus=None):
    """Read an AU dict. Returns (image ids, AU names, intensities (N, A) float32)."""
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(path, f'expected a dict {{image_id: AU array}}, found {type(obj).__name__}')
    expected = num_aus or len(AU_NAMES)
    ids, rows, seen = [], [], set()
    for key, value in obj.items():
        try:
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            BAD_DATA(path, f'entry {key!r}: AU values are not numbers: {str(value)[:80]}', None, 'AU value not a number')
            continue
        problem = (('row with a wrong number of values', f'expected {expected} AU values, found {arr.shape[0]}')
                   if arr.shape[0] != expected else _au_values_problem(arr))
        if problem is None and os.path.splitext(str(key))[0] in seen:
            problem = 'duplicate name', f'{key!r} names the same image as an earlier entry'
        if problem:
            BAD_DATA(path, f'entry {key!r}: {problem[1]}', None, problem[0])
            continue
        seen.add(os.path.splitext(str(key))[0])
        ids.append(str(key))
        rows.append(np.clip(arr, 0, AU_MAX))
    if not rows:
        raise DataError(path, 'the AU dict has no valid entries')
    return ids, list(AU_NAMES[:expected]), np.stack(rows).astype(np.float32)


def read_id_list(path):
    """One image file name per line (train_ids.csv / test_ids.csv)."""
    return [line.strip().split(',')[0].strip() for line in read_lines(path, 'list of image names') if line.strip()]


# --------------------------------------------------------------------------- emotion CSV

def read_emotion_csv(path, c_dim):
    """Read `subDirectory_filePath,expression`. Keeps rows with 0 <= expression < c_dim
    (AffectNet's 8 None, 9 Uncertain, 10 No-Face and classes past c_dim are dropped).
    Returns (image base names, class indices int64)."""
    names, labels = [], []
    reader = csv.reader(read_lines(path, 'emotion CSV'))
    header = next(reader, None)
    if header is None:
        raise DataError(path, 'the file is empty')
    header = [h.strip() for h in header]
    if 'subDirectory_filePath' not in header or 'expression' not in header:
        raise DataError(path, f'header must name subDirectory_filePath and expression, found {header}', 1)
    i_path, i_expr = header.index('subDirectory_filePath'), header.index('expression')
    seen = {}
    for lineno, row in enumerate(reader, 2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            BAD_DATA(path, f'expected {len(header)} columns, found {len(row)}', lineno,
                     'row with a wrong number of values')
            continue
        try:
            value = float(row[i_expr])
            expr = int(value)
            if expr != value:
                raise ValueError
        except (ValueError, OverflowError):
            BAD_DATA(path, f'expression {row[i_expr]!r} is not an integer', lineno, 'expression not an integer')
            continue
        name = os.path.basename(row[i_path].strip().replace('\\', '/'))
        if name in seen:
            BAD_DATA(path, f'duplicate image {name!r} (first on line {seen[name]})', lineno, 'duplicate name')
            continue
        seen[name] = lineno
        if 0 <= expr < c_dim:
            names.append(name)
            labels.append(expr)
    if not names:
        raise DataError(path, f'no rows with an expression in [0, {c_dim})')
    return names, np.asarray(labels, dtype=np.int64)


def emotion_csv_names(path):
    """Base names of every row of an emotion CSV, whatever the class ([] if the file is not one)."""
    try:
        reader = csv.reader(read_lines(path, 'emotion CSV'))
    except DataError:          # another kind of file beside the labels
        return []
    header = [h.strip() for h in next(reader, [])]
    if 'subDirectory_filePath' not in header:
        return []
    i = header.index('subDirectory_filePath')
    return [os.path.basename(r[i].strip().replace('\\', '/')) for r in reader if len(r) > i and r[i].strip()]


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


def resolve_name(name, files, by_stem):
    """The file of the image a label names (exactly, or by its name without extension), or None."""
    if name in files:
        return name
    stem = os.path.splitext(name)[0]
    if stem in by_stem:
        return by_stem[stem]
    return by_stem.get(name)          # AU-dict ids have no extension


def check_unlabelled(image_dir, label_names, label_path):
    """Images in the folder that no label row names: an error, or skipped (--on_bad_data)."""
    _, by_stem = _index_image_dir(image_dir)
    labelled = {os.path.splitext(n)[0] for n in label_names} | set(label_names)
    extra = sorted(fn for stem, fn in by_stem.items() if stem not in labelled)
    BAD_DATA.many(image_dir, extra, 'image without a label',
                  f'{len(extra)} image(s) have no label row in {label_path}, e.g. '
                  f'{os.path.join(image_dir, extra[0]) if extra else ""}')


class LabelledImages(torch.utils.data.Dataset):
    """Images with labels held in memory.

    `labels` is an (N, A) float32 tensor of AUs / 5, or an (N,) int64 tensor of classes.
    """

    def __init__(self, image_dir, names, labels, image_size, label_path='', label_names=None):
        self.image_dir, self.image_size, self.label_path = image_dir, image_size, label_path
        self.label_names = label_names
        files, by_stem = _index_image_dir(image_dir)
        resolved, keep, missing = [], [], []
        for i, name in enumerate(names):
            fn = resolve_name(name, files, by_stem)
            if fn is None:
                missing.append(os.path.join(image_dir, name))
            else:
                resolved.append(fn)
                keep.append(i)
        BAD_DATA.many(label_path, missing, 'labelled image without a file',
                      f'{len(missing)} labelled image(s) have no file in {image_dir}, e.g. {missing[0] if missing else ""}')
        if not resolved:
            raise DataError(label_path, f'the dataset is empty: no labelled image found in {image_dir}')
        self.files = resolved
        self.labels = torch.as_tensor(labels)[torch.as_tensor(keep, dtype=torch.long)]
        self.cache_rows = None     # set by prepare_training_images when unreadable images were dropped

    def subset(self, keep):
        """The same dataset restricted to the indices `keep`."""
        other = copy.copy(self)
        other.files = [self.files[i] for i in keep]
        other.labels = self.labels[torch.as_tensor(keep, dtype=torch.long)]
        return other

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
            raise FlagError(f'--aus: unknown AU {name!r}; available: {" ".join(available)}')
        idx.append(norm[key])
    if len(set(idx)) != len(idx):
        raise FlagError(f'--aus: an AU is named twice in {requested}')
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
    check_unlabelled(image_dir, names, attr_path)
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


def crops_without_emotion(folder, labelled):
    """In a folder written by --mode prepare (prepare_report.json beside aus.txt), the crops its AU table names
    and no emotion CSV does: the crops of sources given without --source_labels, left out of an emotion
    dataset with a note rather than refused as unlabelled images. Empty for any other folder."""
    au_table = os.path.join(folder, 'aus.txt')
    if not (os.path.isfile(os.path.join(folder, 'prepare_report.json')) and os.path.isfile(au_table)):
        return set()
    without = set(read_au_table(au_table)[0]) - labelled - {os.path.splitext(n)[0] for n in labelled}
    if without:
        print(f'note: {len(without)} crops of {folder} carry AUs but no emotion (their sources were prepared '
              f'without --source_labels): left out')
    return without


def emotion_dataset(image_dir, csv_path, image_size, c_dim):
    """GANmut dataset from an emotion CSV. Images that no emotion CSV of the label file's
    folder names (training.csv and test.csv, or AffectNet's training and validation files)
    count as unlabelled."""
    names, labels = read_emotion_csv(csv_path, c_dim)
    folder = os.path.dirname(os.path.abspath(csv_path))
    labelled = set()
    for fn in sorted(os.listdir(folder)):
        if fn.lower().endswith('.csv'):
            labelled |= set(emotion_csv_names(os.path.join(folder, fn)))
    check_unlabelled(image_dir, labelled | crops_without_emotion(folder, labelled), csv_path)
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
    (and removes the stale one). Images that cannot be decoded raise a DataError
    (--on_bad_data error) or are left black and listed in a `.unreadable.json`
    beside the cache, which sets `dataset.unreadable` ({index: problem}).
    """
    cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(dataset.image_dir)), '.cache')
    prefix = _cache_prefix(dataset)
    n, s = len(dataset), dataset.image_size
    path = os.path.join(cache_dir, f'{prefix}{_cache_key(dataset)}.u8')
    bad_path = path + '.unreadable.json'
    if os.path.exists(path) and os.path.getsize(path) == n * s * s * 3:
        dataset.unreadable = {}
        if os.path.exists(bad_path):
            with open(bad_path) as f:
                dataset.unreadable = {int(i): p for i, p in json.load(f).items()}
        return np.memmap(path, dtype=np.uint8, mode='c', shape=(n, s, s, 3))  # copy-on-write: writable view, file untouched
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    arr = np.memmap(tmp, dtype=np.uint8, mode='w+', shape=(n, s, s, 3))
    if verbose:
        print(f'decoding {n} images once into {path}', flush=True)
    unreadable = {}
    try:
        for i in range(n):
            try:
                arr[i] = dataset.load_uint8(i)
            except DataError as e:
                if BAD_DATA.mode == 'error':
                    raise
                arr[i] = 0
                unreadable[i] = e.problem
        arr.flush()
        del arr
        if unreadable:
            with open(bad_path, 'w') as f:
                json.dump({str(i): p for i, p in unreadable.items()}, f)
        elif os.path.exists(bad_path):
            os.remove(bad_path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    for old in os.listdir(cache_dir):   # older versions of this cache
        if old.startswith(prefix) and old.endswith(('.u8', '.u8.unreadable.json')) \
                and not os.path.basename(path) in old:
            try:
                os.remove(os.path.join(cache_dir, old))
            except OSError:
                pass
    dataset.unreadable = unreadable
    return np.memmap(path, dtype=np.uint8, mode='c', shape=(n, s, s, 3))  # copy-on-write: writable view, file untouched


def prepare_training_images(dataset):
    """Decode every image once into the uint8 cache (see uint8_cache). Unreadable images
    stop here with a DataError naming the file, or with --on_bad_data skip are dropped:
    the returned dataset is then a subset whose `cache_rows` index the cache."""
    arr = uint8_cache(dataset)
    for i, problem in sorted(dataset.unreadable.items()):
        BAD_DATA(dataset.path(i), problem, None, 'unreadable image')
    if dataset.unreadable:
        keep = [i for i in range(len(dataset)) if i not in dataset.unreadable]
        if not keep:
            raise DataError(dataset.image_dir, 'the dataset is empty: no image could be read')
        dataset = dataset.subset(keep)
        dataset.cache_rows = torch.as_tensor(keep, dtype=torch.long)
    dataset.cache_array = arr
    return dataset


def load_readable(dataset, indices):
    """(indices used, uint8 images) for `indices`: an unreadable image is a DataError, or with
    --on_bad_data skip is replaced by the next readable image of the dataset (for the fixed
    sample and evaluation faces, which are picked by index)."""
    used, images, unreadable = [], [], set()
    for i in indices:
        j = int(i)
        for _ in range(len(dataset)):
            if j not in unreadable:
                try:
                    images.append(dataset.load_uint8(j))
                    used.append(j)
                    break
                except DataError as e:
                    BAD_DATA(e.path, e.problem, None, 'unreadable image')
                    unreadable.add(j)
            j = (j + 1) % len(dataset)
        else:
            raise DataError(dataset.image_dir, 'the dataset is empty: no image could be read')
    return np.asarray(used, dtype=np.int64), images


def prepare_training_set(dataset, use_cache=True):
    """The training set as training reads it: images decoded once into the uint8 cache
    (prepare_training_images) unless `use_cache` is off; then what --on_bad_data skip dropped
    while reading labels and images is reported."""
    if use_cache:
        dataset = prepare_training_images(dataset)
    for line in BAD_DATA.report():
        print(line)
    return dataset


class ReadableItems(torch.utils.data.Dataset):
    """(image, label, path, problem) for the simple loader: an image that cannot be read
    comes back black with its path and problem, so the main process can raise the same
    clear DataError as the cached path (or skip it) instead of a worker traceback."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            x, label = self.dataset[i]
            return x, label, '', ''
        except DataError as e:
            s = self.dataset.image_size
            return torch.zeros(3, s, s), self.dataset.labels[i], e.path, e.problem


def worker_ignores_stop_signals(_worker_id):
    """Loader workers leave SIGINT/SIGTERM to the main process, which saves a checkpoint
    and then shuts them down."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def drop_unreadable(x, labels, paths, problems):
    """Batch from ReadableItems -> (x, labels): unreadable rows raise a DataError or, with
    --on_bad_data skip, are replaced by readable rows of the same batch."""
    bad = [i for i, p in enumerate(paths) if p]
    if not bad:
        return x, labels
    for i in bad:
        BAD_DATA(paths[i], problems[i], None, 'unreadable image')
    good = [i for i in range(len(paths)) if not paths[i]]
    if not good:
        raise DataError(paths[0], 'every image of a batch is unreadable')
    rows = torch.as_tensor([i if not paths[i] else good[i % len(good)] for i in range(len(paths))])
    return x[rows], labels[rows]


def repeat_factors(labels, threshold):
    """Repeat-factor sampling (Gupta et al. 2019, LVIS): each image is drawn in proportion to the largest
    max(1, sqrt(threshold / f)) over its labels, f the share of images with that label, so that rare labels
    are seen more often without a handful of images filling the batches. A label is an emotion class (int64
    labels, one per image) or an AU at an intensity step (float labels, AU / 5: AU j at k to k + 1, k >= 1,
    is one label; AU 0 to 1 is none). Returns (N,) float64 weights, 1 for an image of only common labels."""
    n = labels.shape[0]
    if labels.is_floating_point():
        level = (labels.double() * 5).floor().clamp(0, 4).long()
        ids = level + 5 * torch.arange(labels.shape[1]).view(1, -1)
        present = level >= 1
    else:
        ids, present = labels.long().view(-1, 1), torch.ones(n, 1, dtype=torch.bool)
    share = torch.bincount(ids[present], minlength=int(ids.max()) + 1).double() / n
    factor = (threshold / share.clamp(min=1 / n)).sqrt().clamp(min=1)
    return torch.where(present, factor[ids], torch.ones(())).amax(1)


def batch_indices(num_items, batch_size, iteration, seed, rank=0, world=1, weights=None):
    """Indices of the batch of `iteration`: epoch e = iteration // batches_per_epoch
    is a permutation seeded by (seed, e). A pure function of the iteration, so a
    resumed run reads exactly the batches the uninterrupted run would have read.
    With `world` ranks, the iteration reads a global batch of world x batch_size
    images and `rank` gets its rows rank*B..(rank+1)*B-1 (see utils/distributed.py).
    With `weights` (repeat_factors), the global batch is drawn with replacement in proportion to them,
    seeded by (seed, iteration): no epochs then."""
    batch_size = min(batch_size, num_items // world)
    if batch_size < 1:
        raise DataError('the training set', f'{num_items} images cannot feed {world} ranks')
    if weights is not None:
        g = torch.Generator().manual_seed(seed * 1_000_003 + 2 ** 40 + iteration)
        drawn = torch.multinomial(weights, batch_size * world, replacement=True, generator=g)
        return drawn[rank * batch_size:(rank + 1) * batch_size]
    per_epoch = num_items // (batch_size * world)
    epoch, pos = divmod(iteration, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_items, generator=g)
    start = (pos * world + rank) * batch_size
    return perm[start:start + batch_size]


class ResumableBatchSampler(torch.utils.data.Sampler):
    """batch_indices() for iterations start..stop-1, for a DataLoader with workers."""

    def __init__(self, num_items, batch_size, seed, start, stop, rank=0, world=1, weights=None):
        self.args = num_items, batch_size, seed
        self.start, self.stop, self.rank, self.world, self.weights = start, stop, rank, world, weights

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        n, b, seed = self.args
        for it in range(self.start, self.stop):
            yield batch_indices(n, b, it, seed, self.rank, self.world, self.weights).tolist()


# --------------------------------------------------------------------------- which data

# What resolve_data looks for, per kind of labels: the synthetic faces' label file, a dataset folder's
# image folders and label files (in order of preference), and what a folder must hold.
LABEL_KINDS = {
    'au': dict(synthetic='aus.txt', image_folders=('images', 'imgs', 'img_align_celeba'),
               label_files=('aus.txt', 'list_attr_celeba.txt', 'aus_openface.pkl'), any_txt=True,
               expected='an images/ (or imgs/) folder and an AU label file (aus.txt, list_attr_celeba.txt or '
                        'aus_openface.pkl)'),
    'emotion': dict(synthetic='training.csv', image_folders=('images', 'imgs'), label_files=('training.csv',),
                    any_txt=False, expected='an images/ (or imgs/) folder and training.csv'),
}


def resolve_data(cfg, labels):
    """The training data of the flags, for `labels` 'au' (GANimation) or 'emotion' (GANmut): fills
    cfg.image_dir, cfg.attr_path and cfg.dataset_kind (synthetic, custom or folder) and returns a
    description. --image_dir/--attr_path name the data (GANmut: an emotion CSV); else --dataset:
    `auto` is data/celeba when there is one and the labels are AUs (CelebA has no emotions), else the
    built-in synthetic faces (generated when missing); a folder is searched as LABEL_KINDS says."""
    spec = LABEL_KINDS[labels]
    if cfg.image_dir or cfg.attr_path:
        if not (cfg.image_dir and cfg.attr_path):
            raise FlagError('give both --image_dir and --attr_path, or neither (to use --dataset)')
        if labels == 'emotion' and not cfg.attr_path.lower().endswith('.csv'):
            raise FlagError(f'--attr_path {cfg.attr_path}: GANmut trains on an emotion CSV '
                            f'(header subDirectory_filePath,expression)')
        cfg.dataset_kind = 'synthetic' if synthetic_root(cfg.attr_path) else 'custom'
        return f'{cfg.attr_path} with images in {cfg.image_dir}'
    choice = cfg.dataset
    if choice == 'auto':
        choice = 'data/celeba' if labels == 'au' and os.path.isdir('data/celeba') else 'synthetic'
    if choice == 'synthetic':
        root = cfg.synthetic_dir
        sf.ensure_dataset(root, cfg.synthetic_images, cfg.image_size)
        cfg.image_dir, cfg.attr_path = os.path.join(root, 'images'), os.path.join(root, spec['synthetic'])
        cfg.dataset_kind = 'synthetic'
        labelled = '' if labels == 'au' else ', emotion labels'
        return f'built-in synthetic faces{labelled} ({cfg.synthetic_images} images, {root})'
    if not os.path.isdir(choice):
        raise FlagError(f'--dataset {choice}: no such folder (use auto, synthetic or a dataset folder)')
    image_dir = next((os.path.join(choice, d) for d in spec['image_folders'] if os.path.isdir(os.path.join(choice, d))),
                     None)
    attr = next((os.path.join(choice, f) for f in spec['label_files'] if os.path.exists(os.path.join(choice, f))),
                None)
    if attr is None and spec['any_txt']:
        txts = sorted(f for f in os.listdir(choice) if f.endswith('.txt'))
        attr = os.path.join(choice, txts[0]) if txts else None
    if image_dir is None or attr is None:
        raise FlagError(f'--dataset {choice}: expected {spec["expected"]} inside it')
    cfg.image_dir, cfg.attr_path = image_dir, attr
    cfg.dataset_kind = 'synthetic' if synthetic_root(attr) else 'folder'
    return f'{choice} ({attr})'


def synthetic_root(label_path):
    """The synthetic dataset folder that holds `label_path`, or None for other data."""
    root = os.path.dirname(os.path.abspath(label_path))
    ok = all(os.path.exists(os.path.join(root, f)) for f in ('meta.csv', 'dataset.json'))
    return root if ok else None
