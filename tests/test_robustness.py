"""Never lose a run, refuse bad input clearly: kill -9 and resume, SIGTERM,
corrupt checkpoints, non-finite losses, bad data in every form, and the label parsers
under arbitrary input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import TINY_MODEL

import data_loader as dl
import losses
import main
import solver
import synthetic_faces as sf
from utils import checkpoint, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW = ' '.join(['1.5'] * 17)


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth_robust')
    sf.write_dataset(str(root), num_images=24, image_size=32, seed=5, verbose=False)
    return root


@pytest.fixture(autouse=True)
def strict_policy():
    """Every test starts (and leaves) the process with the default policy."""
    dl.set_bad_data_policy('error')
    yield
    dl.set_bad_data_policy('error')


def train_args(synth, out, *extra):
    return (['--mode', 'train', '--image_dir', str(synth / 'images'), '--attr_path', str(synth / 'aus.txt'),
             '--outputs_dir', str(out), '--sample_step', '1000', '--log_step', '5'] + TINY_MODEL + list(extra))


def spawn(args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'main.py')] + args, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pred, proc, timeout=120):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, f'training ended early: {proc.communicate()}'
        assert time.time() - t0 < timeout, 'timed out'
        time.sleep(0.01)


def same_state(a, b):
    for key in ('G', 'D'):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f'{key}.{name} differs'
    for key in ('g_optim', 'd_optim'):
        for i, st_a in a[key]['state'].items():
            for name, t in st_a.items():
                assert torch.equal(torch.as_tensor(t), torch.as_tensor(b[key]['state'][i][name])), f'{key} {i} {name}'


# --------------------------------------------------------------------------- never lose a run

def test_kill9_then_resume_is_bit_identical(synth, tmp_path):
    common = ['--num_iters', '60', '--num_iters_decay', '30', '--model_save_step', '4', '--keep_checkpoints', '2',
              '--deterministic']
    full = tmp_path / 'full'
    proc = spawn(train_args(synth, full, *common))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    part = tmp_path / 'part'
    proc = spawn(train_args(synth, part, *common))
    wait_for(lambda: any(it >= 12 for it, _ in checkpoint.list_checkpoints(str(part / 'models'))), proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint.list_checkpoints(str(part / 'models'))[-1][0]
    assert killed_at < 60
    proc = spawn(train_args(synth, part, *common, '--resume_iters', 'latest'))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert 'resumed from' in out + err
    same_state(checkpoint.load(checkpoint.path_for(str(full / 'models'), 60)),
               checkpoint.load(checkpoint.path_for(str(part / 'models'), 60)))
    runs = (part / 'runs.jsonl').read_text().splitlines()
    assert len(runs) == 2 and '--resume_iters' in json.loads(runs[1])['argv']


def test_sigterm_saves_a_checkpoint(synth, tmp_path):
    out_dir = tmp_path / 'term'
    proc = spawn(train_args(synth, out_dir, '--num_iters', '100000', '--model_save_step', '100000'))
    wait_for(lambda: (out_dir / 'logs').is_dir() and any(
        f.startswith('events') and os.path.getsize(out_dir / 'logs' / f) > 200 for f in os.listdir(out_dir / 'logs')),
        proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    ckpts = checkpoint.list_checkpoints(str(out_dir / 'models'))
    assert len(ckpts) == 1 and 0 < ckpts[0][0] < 100000
    assert 'SIGTERM' in err and '--resume_iters latest' in err and ckpts[0][1] in err
    assert checkpoint.load(ckpts[0][1])['iteration'] == ckpts[0][0]


def _tiny_checkpoint(value):
    return {'G': {'w': torch.full((64, 64), float(value))}, 'iteration': value, 'config': {'a': 1}}


def test_corrupt_checkpoint_falls_back_to_the_previous(tmp_path):
    models = str(tmp_path)
    for it in (2, 4, 6):
        checkpoint.save(_tiny_checkpoint(it), checkpoint.path_for(models, it))
    newest = checkpoint.path_for(models, 6)
    # a byte of the tensor data flipped: the zip still opens, the checksum catches it
    data = bytearray(open(newest, 'rb').read())
    pos = data.find(np.float32(6.0).tobytes() * 8)
    assert pos > 0
    data[pos + 1] ^= 0xFF
    open(newest, 'wb').write(bytes(data))
    with pytest.raises(checkpoint.CorruptCheckpoint, match='checksum'):
        checkpoint.load(newest)
    with pytest.warns(UserWarning, match='iter_00000006.ckpt.*falling back'):
        path, ck = checkpoint.load_newest(models)
    assert path == checkpoint.path_for(models, 4) and ck['iteration'] == 4
    assert '_sha256' not in ck
    # a truncated file (the kind a full disk leaves) is detected too
    middle = checkpoint.path_for(models, 4)
    with open(middle, 'r+b') as f:
        f.truncate(os.path.getsize(middle) // 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        path, ck = checkpoint.load_newest(models)
    assert ck['iteration'] == 2 and len(caught) == 2
    with pytest.raises(checkpoint.CorruptCheckpoint, match='cannot be read'):
        checkpoint.load_newest(models, 4)           # a named iteration must load as asked


def test_resume_skips_a_corrupt_newest_checkpoint(synth, tmp_path, capsys):
    out = tmp_path / 'r'
    assert main.main(train_args(synth, out, '--num_iters', '4', '--model_save_step', '2')) == 0
    newest = checkpoint.path_for(str(out / 'models'), 4)
    with open(newest, 'r+b') as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match='falling back'):
        assert main.main(train_args(synth, out, '--num_iters', '6', '--model_save_step', '2',
                                    '--resume_iters', 'latest')) == 0
    printed = capsys.readouterr()
    assert f'resumed from {checkpoint.path_for(str(out / "models"), 2)}' in printed.out + printed.err
    assert checkpoint.load(checkpoint.path_for(str(out / 'models'), 6))['iteration'] == 6


def test_non_finite_steps_are_skipped_then_training_stops(synth, tmp_path, monkeypatch, capsys):
    real_critic_loss = losses.critic_loss
    calls = {'n': 0}

    def nan_after_three(*args, **kw):
        loss, record = real_critic_loss(*args, **kw)
        calls['n'] += 1
        if calls['n'] == 3 or calls['n'] >= 7:       # one isolated bad step, then a run of them
            loss = loss * float('nan')
        return loss, record
    monkeypatch.setattr(losses, 'critic_loss', nan_after_three)
    out = tmp_path / 'nan'
    rc = main.main(train_args(synth, out, '--num_iters', '40', '--model_save_step', '4',
                              '--nonfinite_patience', '4'))
    assert rc == 3
    err = capsys.readouterr().err
    assert 'iteration 10' in err and 'in 4 iterations in a row' in err
    assert checkpoint.path_for(str(out / 'models'), 4) in err           # the last good checkpoint
    ckpts = [it for it, _ in checkpoint.list_checkpoints(str(out / 'models'))]
    assert ckpts == [4, 8]   # the iteration-8 checkpoint came during the bad run; iteration 4 is the good one


@pytest.mark.parametrize('fused_adam', ['true', 'foreach', 'false'])
def test_skipped_step_leaves_weights_and_optimiser_alone(synth, tmp_path, fused_adam):
    """The fused Adam skips on the device (found_inf); the others on the host: the same result. Each
    Adam asked for by name, so every path runs whatever `auto` picks on this CPU."""
    from solver import Solver
    cfg = main.build_parser().parse_args(train_args(synth, tmp_path, '--num_iters', '2', '--fused_adam', fused_adam))
    dl.resolve_data(cfg, 'au')
    solver = Solver(cfg, dl.au_dataset(cfg.image_dir, cfg.attr_path, 32, 'train'))
    params = list(solver.D.parameters())
    kind = {k for k in ('fused', 'foreach') if solver.d_optim.defaults.get(k)} or {'loop'}
    assert kind == {{'true': 'fused', 'foreach': 'foreach', 'false': 'loop'}[fused_adam]}

    def step(scale):
        record = {}
        solver.d_optim.zero_grad(set_to_none=True)
        solver.apply_step(sum(p.square().sum() for p in params) * scale, solver.d_optim, record)
        return record
    assert float(step(1.0)['skipped/D']) == 0.0            # a good step first: the optimiser has state
    before = {k: v.clone() for k, v in solver.D.state_dict().items()}
    state = {k: v.clone() for k, v in solver.d_optim.state[params[0]].items()}
    record = step(float('inf'))
    assert set(record) == {'skipped/D'} and torch.is_tensor(record['skipped/D']) and float(record['skipped/D']) == 1.0
    assert all(torch.equal(before[k], v) for k, v in solver.D.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in solver.d_optim.state[params[0]].items())   # step count too
    assert float(step(1.0)['skipped/D']) == 0.0            # and the next good step is taken
    assert any(not torch.equal(before[k], v) for k, v in solver.D.state_dict().items())


def test_record_window_sums_on_the_device_and_leaves_out_non_finite_values():
    from utils.records import RecordWindow
    window = RecordWindow()
    t = torch.tensor
    window.add({'D/loss': t(1.0), 'D/gp': t(float('nan'))})
    window.add({'D/loss': t(3.0), 'D/gp': t(2.0), 'G/loss': t(5.0)})
    window.add({'D/loss': t(float('inf')), 'D/gp': t(4.0)})
    assert window.nonfinite_parts() == ['D/gp', 'D/loss']
    assert window.nonfinite_parts() == []                  # counted since the last call
    assert window.means() == {'D/loss': 2.0, 'D/gp': 3.0, 'G/loss': 5.0}
    assert window.means() == {}


def test_run_folder_records_command_commit_and_versions(synth, tmp_path):
    out = tmp_path / 'rec'
    argv = train_args(synth, out, '--num_iters', '2', '--model_save_step', '2')
    assert main.main(argv) == 0
    rec = json.loads((out / 'runs.jsonl').read_text().splitlines()[0])
    assert rec['packages']['torch'] == torch.__version__ and rec['packages']['numpy'] == np.__version__
    assert rec['argv'][1:] == argv                      # the flags main() was given
    if os.path.exists(os.path.join(ROOT, '.git')):      # a checkout (CI's fresh clone): its commit
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout
        assert rec['git'].removesuffix('-dirty') == head.strip()
    else:                                               # an exported tree has none
        assert rec['git'] is None
    assert json.loads((out / 'config.json').read_text())['num_iters'] == 2


# --------------------------------------------------------------------------- bad data

def _dataset(tmp_path, synth, rows=None, n=6, corrupt=None, extra_images=()):
    """A small copy of the synthetic data with label rows `rows` (default: the first n, as is)."""
    img = tmp_path / 'images'
    img.mkdir(exist_ok=True)
    names, _, values = dl.read_au_table(str(synth / 'aus.txt'))
    for name in names[:n] + list(extra_images):
        shutil.copy(synth / 'images' / name, img / name)
    if rows is None:
        rows = [f'{nm} ' + ' '.join(f'{v:g}' for v in vals) for nm, vals in zip(names[:n], values[:n])]
    (tmp_path / 'aus.txt').write_text('\n'.join(rows) + '\n')
    if corrupt:
        data = (img / corrupt).read_bytes()
        (img / corrupt).write_bytes(data[:len(data) // 3])          # truncated PNG
    return str(img), str(tmp_path / 'aus.txt'), names[:n]


def _rows(names, bad_row, at=2):
    rows = [f'{nm} {ROW}' for nm in names]
    rows.insert(at, bad_row)
    return rows


@pytest.mark.parametrize('bad_row, kind, problem', [
    ('{0} 1 2 3', 'row with a wrong number of values', 'found 3 value'),
    ('{0} ' + ' '.join(['1'] * 18), 'row with a wrong number of values', 'found 18 value'),
    ('{0} ' + ' '.join(['1'] * 16 + ['nan']), 'non-finite AU value', 'non-finite'),
    ('{0} ' + ' '.join(['1'] * 16 + ['-inf']), 'non-finite AU value', 'non-finite'),
    ('{0} ' + ' '.join(['1'] * 16 + ['6.5']), 'AU value out of range', r'\[0, 5\]'),
    ('{0} ' + ' '.join(['1'] * 16 + ['x']), 'AU value not a number', "'x' is not a number"),
    ('{dup} ' + ROW, 'duplicate name', 'duplicate name'),
])
def test_bad_label_rows_error_or_skip(synth, tmp_path, bad_row, kind, problem):
    img, _, names = _dataset(tmp_path, synth, n=5)
    extra = 'extra.png'
    shutil.copy(os.path.join(img, names[0]), os.path.join(img, extra))
    rows = _rows(names, bad_row.format(extra, dup=names[0]))
    if '{dup}' in bad_row:
        os.remove(os.path.join(img, extra))
    path = tmp_path / 'aus.txt'
    path.write_text('\n'.join(rows) + '\n')
    with pytest.raises(dl.DataError, match=problem) as e:
        dl.au_dataset(img, str(path), 32, 'all')
    assert f'{path}, line 3' in str(e.value)
    policy = dl.set_bad_data_policy('skip')
    if '{dup}' not in bad_row:
        os.remove(os.path.join(img, extra))          # the skipped row's image is then unlabelled too
    ds = dl.au_dataset(img, str(path), 32, 'all')
    assert sorted(ds.files) == sorted(names)
    assert list(policy.skipped.values()) == [kind]
    assert f'1 x {kind}' in '\n'.join(policy.report())


def test_missing_and_unlabelled_images(synth, tmp_path):
    img, path, names = _dataset(tmp_path, synth, n=5)
    os.remove(os.path.join(img, names[1]))                       # a label without its image
    shutil.copy(os.path.join(img, names[0]), os.path.join(img, 'stray.png'))   # an image without a label
    with pytest.raises(dl.DataError, match='stray.png') as e:
        dl.au_dataset(img, path, 32, 'all')
    assert 'no label row' in str(e.value)
    os.remove(os.path.join(img, 'stray.png'))
    with pytest.raises(dl.DataError, match=names[1]) as e:
        dl.au_dataset(img, path, 32, 'all')
    assert str(e.value).startswith(path) and 'no file' in str(e.value)
    shutil.copy(os.path.join(img, names[0]), os.path.join(img, 'stray.png'))
    policy = dl.set_bad_data_policy('skip')
    ds = dl.au_dataset(img, path, 32, 'all')
    assert len(ds) == 4 and names[1] not in ds.files and 'stray.png' not in ds.files
    assert sorted(policy.skipped.values()) == ['image without a label', 'labelled image without a file']


def test_empty_dataset_is_an_error_in_both_modes(synth, tmp_path):
    img, _, names = _dataset(tmp_path, synth, n=2)
    path = tmp_path / 'aus.txt'
    path.write_text(f'{names[0]} 1 2\n{names[1]} nan\n')
    for mode in ('error', 'skip'):
        dl.set_bad_data_policy(mode)
        with pytest.raises(dl.DataError, match='aus.txt'):
            dl.au_dataset(img, str(path), 32, 'all')
    path.write_text('')
    with pytest.raises(dl.DataError, match='no valid label rows'):
        dl.au_dataset(img, str(path), 32, 'all')


def test_unreadable_image_error_names_the_file_and_skip_drops_it(synth, tmp_path, capsys):
    img, path, names = _dataset(tmp_path, synth, n=6, corrupt=None)
    bad = names[2]
    data = open(os.path.join(img, bad), 'rb').read()
    open(os.path.join(img, bad), 'wb').write(data[:len(data) // 3])
    ds = dl.au_dataset(img, path, 32, 'all')
    with pytest.raises(dl.DataError, match=bad) as e:
        dl.prepare_training_images(ds)
    assert 'cannot read image' in str(e.value)
    policy = dl.set_bad_data_policy('skip')
    ds = dl.prepare_training_images(dl.au_dataset(img, path, 32, 'all'))
    assert len(ds) == 5 and bad not in ds.files and ds.cache_rows.tolist() == [0, 1, 3, 4, 5]
    assert list(policy.skipped.values()) == ['unreadable image']
    # the cache remembers what it could not read: the next start reports it again without decoding
    dl.set_bad_data_policy('error')
    with pytest.raises(dl.DataError, match=bad):
        dl.prepare_training_images(dl.au_dataset(img, path, 32, 'all'))
    # training with skip uses only readable images, reported at start-up
    out = tmp_path / 'run'
    rc = main.main(['--mode', 'train', '--image_dir', img, '--attr_path', path, '--outputs_dir', str(out),
                    '--num_iters', '2', '--model_save_step', '2', '--sample_step', '100', '--on_bad_data', 'skip']
                   + TINY_MODEL)
    assert rc == 0
    printed = capsys.readouterr().out
    assert '1 bad item(s) skipped' in printed and '1 x unreadable image' in printed and bad in printed


def test_loader_worker_errors_reach_the_user_clearly(synth, tmp_path):
    img, path, names = _dataset(tmp_path, synth, n=6)
    data = open(os.path.join(img, names[3]), 'rb').read()
    open(os.path.join(img, names[3]), 'wb').write(b'not a png' + data[:40])
    proc = spawn(['--mode', 'train', '--image_dir', img, '--attr_path', path, '--outputs_dir', str(tmp_path / 'o'),
                  '--num_iters', '8', '--sample_step', '100', '--data_cache', 'false']
                 + TINY_MODEL[:-2] + ['--num_workers', '1'])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert 'Traceback' not in err and 'DataLoader worker' not in err
    assert f'error: {os.path.join(img, names[3])}: cannot read image' in err


def test_unknown_au_name_is_a_clear_error(synth, tmp_path, capsys):
    rc = main.main(train_args(synth, tmp_path / 'a', '--num_iters', '2', '--aus', 'AU12,AU99'))
    assert rc == 2
    assert "--aus: unknown AU 'AU99'" in capsys.readouterr().err


def test_emotion_csv_bad_rows(synth, tmp_path):
    path = tmp_path / 'e.csv'
    path.write_text('subDirectory_filePath,expression\nimages/a.png,1\nimages/b.png,x\nimages/a.png,2\n'
                    'images/c.png\n')
    with pytest.raises(dl.DataError, match=r'e\.csv, line 3: expression \'x\''):
        dl.read_emotion_csv(str(path), 7)
    policy = dl.set_bad_data_policy('skip')
    names, labels = dl.read_emotion_csv(str(path), 7)
    assert names == ['a.png'] and labels.tolist() == [1]
    assert sorted(policy.skipped.values()) == ['duplicate name', 'expression not an integer',
                                               'row with a wrong number of values']


def test_pickled_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    path = tmp_path / 'aus.pkl'
    path.write_bytes(pickle.dumps({'a': Evil()}))
    with pytest.raises(dl.DataError, match='refusing to load'):
        dl.read_au_pickle(str(path))


# --------------------------------------------------------------------------- parsers under any input

_tokens = st.one_of(st.sampled_from(['nan', 'inf', '-1', '0', '2.5', '5', '5.0001', '1e3', 'AU01', 'x.png', '',
                                     '#', '17', 'a b']), st.floats(allow_nan=True, allow_infinity=True).map(str),
                    st.text(max_size=6))
_lines = st.lists(st.lists(_tokens, max_size=20).map(' '.join), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_lines, skip=st.booleans())
def test_au_table_parser_gives_valid_labels_or_its_own_error(tmp_path, lines, skip):
    dl.set_bad_data_policy('skip' if skip else 'error')
    path = tmp_path / 'p.txt'
    path.write_text('\n'.join(lines), encoding='utf-8', errors='replace')
    try:
        names, au_names, values = dl.read_au_table(str(path))
    except dl.DataError as e:
        assert str(e).startswith(str(path))
        return
    assert values.dtype == np.float32 and values.shape == (len(names), len(au_names))
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 5
    assert len(set(names)) == len(names)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_tokens, min_size=0, max_size=4).map(','.join), max_size=8), skip=st.booleans())
def test_emotion_csv_parser_gives_valid_labels_or_its_own_error(tmp_path, rows, skip):
    dl.set_bad_data_policy('skip' if skip else 'error')
    path = tmp_path / 'p.csv'
    path.write_text('\n'.join(['subDirectory_filePath,expression'] + rows), encoding='utf-8', errors='replace')
    try:
        names, labels = dl.read_emotion_csv(str(path), 7)
    except dl.DataError as e:
        assert str(e).startswith(str(path))
        return
    assert len(names) == len(labels) and len(set(names)) == len(names)
    assert ((labels >= 0) & (labels < 7)).all()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_pickle_parser_never_crashes_on_garbage(tmp_path, data):
    path = tmp_path / 'g.pkl'
    path.write_bytes(data)
    try:
        ids, _, values = dl.read_au_pickle(str(path))
    except dl.DataError as e:
        assert str(e).startswith(str(path))
        return
    assert np.isfinite(values).all()


def test_resume_auto_starts_or_resumes(synth, tmp_path, capsys):
    out = tmp_path / 'auto'
    assert main.main(train_args(synth, out, '--num_iters', '2', '--model_save_step', '2',
                                '--resume_iters', 'auto')) == 0
    assert 'resumed from' not in capsys.readouterr().err
    assert main.main(train_args(synth, out, '--num_iters', '4', '--model_save_step', '2',
                                '--resume_iters', 'auto')) == 0
    printed = capsys.readouterr()
    assert f'resumed from {checkpoint.path_for(str(out / "models"), 2)}' in printed.out + printed.err
    assert [it for it, _ in checkpoint.list_checkpoints(str(out / 'models'))] == [2, 4]


def test_sample_and_eval_faces_pass_over_unreadable_images(synth, tmp_path):
    from evaluation import au_scores as evaluate
    root = tmp_path / 'data'
    shutil.copytree(synth, root, ignore=shutil.ignore_patterns('.cache'))
    test_names = dl.read_id_list(str(root / 'test_ids.csv'))
    bad = test_names[0]
    data = (root / 'images' / bad).read_bytes()
    (root / 'images' / bad).write_bytes(data[:len(data) // 3])
    full = dl.au_dataset(str(root / 'images'), str(root / 'aus.txt'), 32, 'test')
    with pytest.raises(dl.DataError, match=bad):
        dl.load_readable(full, range(len(full)))
    with pytest.raises(dl.DataError, match=bad):
        evaluate.EvalPairs(str(root / 'images'), str(root / 'aus.txt'), full.label_names, 32, num_pairs=30)
    policy = dl.set_bad_data_policy('skip')
    used, images = dl.load_readable(full, range(len(full)))
    i_bad = full.files.index(bad)
    assert i_bad not in used and len(images) == len(full)                  # replaced by the next readable one
    assert used[i_bad] == (i_bad + 1) % len(full)
    pairs = evaluate.EvalPairs(str(root / 'images'), str(root / 'aus.txt'), full.label_names, 32, num_pairs=30)
    assert bad not in pairs.files and len(pairs) == 30 and torch.isfinite(pairs.x_src).all()
    assert list(policy.skipped.values()) == ['unreadable image']


def test_mask_warning_fires_for_a_copying_mask_not_for_local_edits(capsys):
    assert solver.mask_extreme(0.982) is None          # the demo's working masks: local edits
    assert 'copies its input' in solver.mask_extreme(0.996)
    assert 'repaints the whole face' in solver.mask_extreme(0.004)
    trainer = SimpleNamespace(writer=records.NoWriter(), learning_rates=lambda it: (1e-4, 1e-4), mask_extreme_logs=0)
    for means in ([{'G/attn_mean': 0.982}] * 7 + [{'G/attn_mean': 0.996}] * 19 + [{'G/attn_mean': 0.98}]
                  + [{'G/attn_mean': 0.996}] * 20):
        solver.Solver.log(trainer, 10, means)
    out = capsys.readouterr().out      # not for 19 logs in a row near 1 (a run's start), once for 20
    assert out.count('warning') == 1 and 'mean A = 0.996' in out
