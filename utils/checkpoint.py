"""Checkpoints: one file per save, `models/iter_00001000.ckpt`, written atomically.

A checkpoint is a plain dict of tensors and Python values (G, D, both
optimisers, the iteration, the config, RNG states) and loads with
`torch.load(weights_only=True)`, which never executes code. It carries a
SHA-256 of its own contents (`_sha256`, over every tensor's bytes and every
value, in a fixed order), so a truncated or damaged file is detected on load
and `load_newest` falls back to the previous checkpoint.
"""
import hashlib
import os
import random
import re
import warnings

import numpy as np
import torch

from utils.errors import CheckpointError, CorruptCheckpoint, MissingInput

_NAME = re.compile(r'^iter_(\d+)\.ckpt$')


def path_for(models_dir, iteration):
    return os.path.join(models_dir, f'iter_{iteration:08d}.ckpt')


def list_checkpoints(models_dir):
    """[(iteration, path)] sorted by iteration; temp files of interrupted saves are ignored."""
    if not os.path.isdir(models_dir):
        return []
    found = [(int(m.group(1)), os.path.join(models_dir, fn))
             for fn in os.listdir(models_dir) if (m := _NAME.match(fn))]
    return sorted(found)


def find(models_dir, which='latest'):
    """Path of checkpoint `which` (an iteration number or 'latest')."""
    ckpts = list_checkpoints(models_dir)
    if not ckpts:
        raise MissingInput(f'no checkpoint (iter_*.ckpt) in {models_dir}')
    if str(which) == 'latest':
        return ckpts[-1][1]
    for it, path in ckpts:
        if it == int(which):
            return path
    raise MissingInput(f'no checkpoint of iteration {which} in {models_dir}; '
                            f'found iterations {[it for it, _ in ckpts]}')


def content_hash(obj):
    """SHA-256 of a checkpoint's contents: dict keys in sorted order, tensors by dtype,
    shape and bytes, other values by repr. The same before saving and after loading."""
    h = hashlib.sha256()

    def visit(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f'T{t.dtype}{tuple(t.shape)}'.encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b'')
        elif isinstance(x, dict):
            h.update(b'{')
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                visit(x[k])
            h.update(b'}')
        elif isinstance(x, (list, tuple)):
            h.update(b'[')
            for v in x:
                visit(v)
            h.update(b']')
        else:
            h.update(repr(x).encode())
    visit(obj)
    return h.hexdigest()


def save(obj, path, keep=None):
    """Write to a temp file in the same folder, fsync, then rename over `path`,
    so a crash never leaves a half-written checkpoint under the real name.
    The contents' checksum goes in as `_sha256`. With `keep`, only the newest
    `keep` checkpoints of the folder remain."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    obj = {k: v for k, v in obj.items() if k != '_sha256'}
    obj['_sha256'] = content_hash(obj)
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(folder)
    if keep:
        for _, old in list_checkpoints(folder)[:-keep]:
            os.remove(old)
    return path


def _fsync_dir(folder):
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path):
    """Load with weights_only=True and verify the checksum; CorruptCheckpoint if either fails.
    Files without a checksum (written before it existed) load unverified."""
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CorruptCheckpoint(f'{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); '
                                f'the file is truncated, damaged or not a checkpoint') from None
    if not isinstance(obj, dict):
        raise CorruptCheckpoint(f'{path}: not a checkpoint (a {type(obj).__name__}, not a dict)')
    stored = obj.pop('_sha256', None)
    if stored is not None and content_hash(obj) != stored:
        raise CorruptCheckpoint(f'{path}: checksum mismatch; the file is damaged')
    return obj


def load_newest(models_dir, which='latest'):
    """(path, checkpoint) of checkpoint `which`. For 'latest', a corrupt newest file is
    skipped with a warning and the one before it used; a named iteration must load."""
    if str(which) != 'latest':
        path = find(models_dir, which)
        return path, load(path)
    ckpts = list_checkpoints(models_dir)
    if not ckpts:
        raise MissingInput(f'no checkpoint (iter_*.ckpt) in {models_dir}')
    problems = []
    for _, path in reversed(ckpts):
        try:
            obj = load(path)
        except CorruptCheckpoint as e:
            warnings.warn(f'{e}; falling back to the previous checkpoint', stacklevel=2)
            problems.append(str(e))
            continue
        return path, obj
    raise CorruptCheckpoint(f'no readable checkpoint in {models_dir}:\n  ' + '\n  '.join(problems))


def rng_state():
    """Global RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {'torch': torch.get_rng_state(), 'python': _plain(random.getstate()),
             'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])]}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    random.setstate(_tuples(state['python']))
    n = state['numpy']
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def _plain(x):
    if isinstance(x, tuple):
        return [_plain(v) for v in x]
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    return x


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def check_state_dict(module, state, what, ckpt_path):
    """Raise a clear error naming every parameter whose shape does not fit."""
    own = module.state_dict()
    problems = []
    for k, v in own.items():
        if k not in state:
            problems.append(f'{what}.{k} missing from the checkpoint')
        elif tuple(state[k].shape) != tuple(v.shape):
            problems.append(f'{what}.{k}: checkpoint {tuple(state[k].shape)}, config {tuple(v.shape)}')
    problems += [f'{what}.{k} in the checkpoint but not in the model' for k in state if k not in own]
    if problems:
        raise CheckpointError(f'{ckpt_path} does not fit the configured model:\n  ' + '\n  '.join(problems[:8])
                         + ('\n  ...' if len(problems) > 8 else ''))


INFERENCE_KEYS = ('config', 'label_names', 'model', 'iteration', 'format', 'space')


def half_precision(path, out, config_updates=None):
    """An inference-only copy of a checkpoint, a sixth of its size: the generator (its moving average when
    training kept one, which test mode uses) in fp16, and what says which model it is; no critic,
    optimisers or random states, and no command line (its paths are the training machine's: write the command
    beside the file). `config_updates` replace config entries (the data's paths, say). Written like every
    checkpoint: atomically, with its checksum. Loading casts back to fp32."""
    ckpt = load(path)
    small = {k: ckpt[k] for k in INFERENCE_KEYS if k in ckpt}
    small['G'] = {k: v.half() if v.is_floating_point() else v
                  for k, v in ckpt['G_ema' if 'G_ema' in ckpt else 'G'].items()}
    small['config'] = {k: v for k, v in dict(small['config'], **(config_updates or {})).items() if k != 'argv'}
    return save(small, out)


def main(argv=None):
    """python -m utils.checkpoint half IN OUT [key=value ...]: half_precision from the command line."""
    import argparse
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument('what', choices=['half'])
    p.add_argument('checkpoint')
    p.add_argument('out')
    p.add_argument('config', nargs='*', help='config entries to replace, key=value')
    a = p.parse_args(argv)
    updates = dict(item.split('=', 1) for item in a.config)
    out = half_precision(a.checkpoint, a.out, updates)
    print(f'{out}: {os.path.getsize(out) / 2 ** 20:.1f} MB (from {os.path.getsize(a.checkpoint) / 2 ** 20:.1f} MB)')


if __name__ == '__main__':
    main()
