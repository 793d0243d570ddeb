"""Checkpoints: one file per save, `models/iter_00001000.ckpt`, written atomically.

A checkpoint is a plain dict of tensors and Python values (G, D, both
optimisers, the iteration, the config, RNG states) and loads with
`torch.load(weights_only=True)`, which never executes code.
"""
import os
import random
import re

import numpy as np
import torch

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
        raise FileNotFoundError(f'no checkpoint (iter_*.ckpt) in {models_dir}')
    if str(which) == 'latest':
        return ckpts[-1][1]
    for it, path in ckpts:
        if it == int(which):
            return path
    raise FileNotFoundError(f'no checkpoint of iteration {which} in {models_dir}; '
                            f'found iterations {[it for it, _ in ckpts]}')


def save(obj, path, keep=None):
    """Write to a temp file in the same folder, fsync, then rename over `path`,
    so a crash never leaves a half-written checkpoint under the real name.
    With `keep`, only the newest `keep` checkpoints of the folder remain."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if keep:
        for _, old in list_checkpoints(folder)[:-keep]:
            os.remove(old)
    return path


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


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
        raise ValueError(f'{ckpt_path} does not fit the configured model:\n  ' + '\n  '.join(problems[:8])
                         + ('\n  ...' if len(problems) > 8 else ''))
