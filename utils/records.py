"""What a run leaves behind: its folders, its config and run record (the command line, commit and
package versions), and the windows of loss records that are logged once per --log_step."""
import contextlib
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

# The run's folders, and the original GANmut code's flags that put one elsewhere.
RUN_FOLDERS = {'logs': 'log_dir', 'models': 'model_save_dir', 'samples': 'sample_dir', 'results': 'result_dir'}


def run_folder(cfg, kind):
    """<outputs_dir>/<kind> (logs, models, samples, results), or the folder its GANmut seed flag names."""
    return getattr(cfg, RUN_FOLDERS[kind], '') or os.path.join(cfg.outputs_dir, kind)


def mode_folder(cfg, kind):
    """Where test and eval modes read the checkpoints (`kind` 'models': --test_models_dir) and write
    their results ('results': --test_results_dir); by default the run's folder."""
    given = {'models': cfg.test_models_dir, 'results': cfg.test_results_dir}[kind]
    return given or run_folder(cfg, kind)


def config_folder(cfg):
    """Where config.json and runs.jsonl go: the run folder, or beside the checkpoints when the original
    GANmut code's --model_save_dir puts them elsewhere."""
    return getattr(cfg, 'model_save_dir', '') or cfg.outputs_dir


class RecordWindow:
    """Running sums of the loss records (dicts of 0-dim tensors) on the device. add() costs no
    host-device sync; means() and nonfinite_parts() read everything in one transfer each."""

    def __init__(self):
        self.sums = {}   # the record's keys -> (sums of the finite values, counts of finite values)
        self.bad = {}    # the record's keys -> counts of non-finite values since nonfinite_parts()

    def add(self, record):
        keys = tuple(record)
        values = torch.stack([record[k] for k in keys])
        finite = torch.isfinite(values)
        s, n = self.sums.get(keys, (0.0, 0.0))
        self.sums[keys] = (s + torch.where(finite, values, 0.0), n + finite.float())
        self.bad[keys] = self.bad.get(keys, 0.0) + (~finite).float()

    def means(self):
        """{key: mean of its finite values} since the last call; keys without one are left out."""
        flat = torch.cat([torch.cat(sn) for sn in self.sums.values()]).tolist() if self.sums else []
        totals, i = {}, 0
        for keys in self.sums:
            for j, k in enumerate(keys):
                s, n = totals.get(k, (0.0, 0.0))
                totals[k] = (s + flat[i + j], n + flat[i + len(keys) + j])
            i += 2 * len(keys)
        self.sums = {}
        return {k: s / n for k, (s, n) in totals.items() if n}

    def nonfinite_parts(self):
        """Sorted names of the parts that were not finite at least once since the last call."""
        flat = torch.cat(list(self.bad.values())).tolist() if self.bad else []
        names = [k for k, b in zip((k for keys in self.bad for k in keys), flat) if b]
        self.bad = {}
        return sorted(set(names))


class Stages:
    """How long each stage of a command took (data, the AU reader, training, test mode, eval), for the
    demo's closing line. A stage run inside another counts for itself only, not for the outer one."""

    def __init__(self):
        self.reset()

    def reset(self):
        """Forget every stage: a new command starts (main.main, and each test, in one process)."""
        self.seconds = {}       # stage name -> seconds, in the order the stages first ran
        self.open = []          # [name, start, seconds taken by stages inside it]

    @contextlib.contextmanager
    def timed(self, name):
        self.open.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            name, start, inner = self.open.pop()
            took = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + took - inner
            if self.open:
                self.open[-1][2] += took

    def summary(self):
        """'data 16 s, AU reader 1 min 14 s, ...': every stage that ran, in order."""
        return ', '.join(f'{name} {duration(s)}' for name, s in self.seconds.items())


def duration(seconds):
    """'42 s', '5 min 03 s'."""
    seconds = int(round(seconds))
    return f'{seconds} s' if seconds < 60 else f'{seconds // 60} min {seconds % 60:02d} s'


STAGES = Stages()     # the stages of the command running (main.main resets it)


class NoWriter:
    """The TensorBoard writer of ranks other than 0: writes nothing."""

    def __getattr__(self, name):
        return lambda *args, **kw: None


def config_dict(cfg):
    return {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool, type(None), list))}


def write_config(cfg):
    """config.json, and one line per start in runs.jsonl beside it (config_folder): the command line,
    git commit and package versions, so every run can be traced and repeated."""
    folder = config_folder(cfg)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump(config_dict(cfg), f, indent=1, sort_keys=True)
    with open(os.path.join(folder, 'runs.jsonl'), 'a') as f:
        f.write(json.dumps(run_record(getattr(cfg, 'argv', sys.argv[1:]))) + '\n')


def run_record(argv):
    """When and where a run started, from which command (`argv`: its flags) and code."""
    here = os.path.dirname(os.path.abspath(__file__))
    versions = {'python': platform.python_version(), 'torch': torch.__version__, 'numpy': np.__version__}
    for name in ('PIL', 'tensorboard', 'onnxruntime'):
        mod = sys.modules.get(name)
        if mod is not None:
            versions[name] = getattr(mod, '__version__', '?')
    return {'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'argv': [sys.argv[0]] + list(argv), 'cwd': os.getcwd(),
            'git': git_commit(here), 'packages': versions, 'host': platform.node(),
            'platform': platform.platform(), 'cuda': torch.version.cuda,
            'device': torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()}


def git_commit(folder):
    """'<sha>' or '<sha>-dirty' of the code's checkout; None outside git."""
    try:
        sha = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=folder, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=folder,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ('-dirty' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        return None
