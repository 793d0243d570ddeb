"""torch.distributed training on CPU with 2 gloo processes launched by torchrun."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import data_loader as dl
import main
import synthetic_faces as sf
from utils import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--image_size', '32', '--g_conv_dim', '8', '--d_conv_dim', '8', '--g_repeat_num', '1', '--d_repeat_num', '3',
        '--n_critic', '2', '--num_iters', '6', '--num_iters_decay', '0', '--model_save_step', '3',
        '--sample_step', '3', '--log_step', '1', '--amp', 'off', '--g_lr', '1e-3', '--d_lr', '1e-3']


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth_dist')
    sf.write_dataset(str(root), num_images=40, image_size=32, seed=3, verbose=False)
    return root


def args(synth, out, batch, *extra):
    return (['--mode', 'train', '--image_dir', str(synth / 'images'), '--attr_path', str(synth / 'aus.txt'),
             '--outputs_dir', str(out), '--batch_size', str(batch)] + TINY + list(extra))


def torchrun(argv, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
                           str(nproc), os.path.join(ROOT, 'main.py')] + argv,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-12000:]
    return proc.stdout + proc.stderr


def assert_close(a, b, what):
    """Same weights up to float summation order. Adam turns a gradient that cancels to ~1e-9
    into a +-lr step whose sign the summation order decides, so a few elements may differ by
    up to a few lr; a mismatch of samples or targets moves most elements by ~lr."""
    close = total = 0
    for key in ('G', 'D'):
        for name, t in a[key].items():
            diff = (t.float() - b[key][name].float()).abs()
            assert diff.mean() < 5e-5, f'{what}: {key}.{name} differs by {diff.mean():.2e} on average'
            close += (diff < 1e-5).sum().item()
            total += diff.numel()
    assert close / total > 0.95, f'{what}: only {close / total:.1%} of the weights agree within 1e-5'


def torchrun_on_rank1_at_critic_step(tmp_path, step, action, argv):
    """Two ranks of main.py where rank 1 runs the Python statement `action` at its `step`-th
    critic loss; returns the finished process (its return code is not checked)."""
    script = tmp_path / 'on_rank1.py'
    script.write_text(f'''import os, signal, sys
sys.path.insert(0, {ROOT!r})
import losses, main
from utils import distributed
from utils.errors import FlagError
real, calls = losses.critic_loss, []
def critic_loss(*a, **k):
    calls.append(1)
    if os.environ['RANK'] == '1' and len(calls) == {step}:
        {action}
    return real(*a, **k)
losses.critic_loss = critic_loss
sys.exit(distributed.entry_point(main.main)())
''')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           str(script)] + argv, env=env, capture_output=True, text=True, timeout=300)


def test_batch_indices_split_the_global_batch():
    one = dl.batch_indices(40, 8, 7, seed=1)
    parts = [dl.batch_indices(40, 4, 7, seed=1, rank=r, world=2) for r in range(2)]
    assert torch.equal(torch.cat(parts), one)                 # rank r reads rows r*B..(r+1)*B-1
    assert not set(parts[0].tolist()) & set(parts[1].tolist())


def test_two_ranks_match_one_process_and_resume(synth, tmp_path):
    single = tmp_path / 'single'
    assert main.main(args(synth, single, 4)) == 0
    ref = checkpoint.load(checkpoint.path_for(str(single / 'models'), 6))

    # 2 ranks x batch 2 == 1 process x batch 4, on the same samples and targets
    pair = tmp_path / 'pair'
    log = torchrun(args(synth, pair, 2))
    assert log.count('distributed: world size 2 (gloo)') == 1       # rank 0 alone prints
    ck = checkpoint.load(checkpoint.path_for(str(pair / 'models'), 6))
    assert_close(ref, ck, '2 ranks vs 1 process')
    fps = ck['rank_fingerprints']
    assert len(fps) == 2 and fps[0] == fps[1]                        # every rank holds the same weights
    changed = max((ck['G'][k].float() - checkpoint.load(checkpoint.path_for(str(pair / 'models'), 3))['G'][k]
                   .float()).abs().max().item() for k in ck['G'])
    assert changed > 1e-3                                           # and they did train

    # one set of output files, written by rank 0
    assert sorted(os.listdir(pair / 'models')) == ['iter_00000003.ckpt', 'iter_00000006.ckpt']
    assert sorted(os.listdir(pair / 'samples')) == sorted(os.listdir(single / 'samples'))
    assert len([f for f in os.listdir(pair / 'logs') if f.startswith('events')]) == 1
    assert len((pair / 'runs.jsonl').read_text().splitlines()) == 1
    assert json.loads((pair / 'config.json').read_text())['batch_size'] == 2

    # a 1-process checkpoint resumed on 2 ranks continues as the 1-process run did
    resumed = tmp_path / 'resumed'
    (resumed / 'models').mkdir(parents=True)
    shutil.copy(checkpoint.path_for(str(single / 'models'), 3), resumed / 'models')
    log = torchrun(args(synth, resumed, 2, '--resume_iters', 'latest'))
    assert 'resumed from' in log
    assert_close(ref, checkpoint.load(checkpoint.path_for(str(resumed / 'models'), 6)), 'resumed on 2 ranks')


def test_an_error_on_one_rank_stops_all_with_its_message(synth, tmp_path):
    proc = torchrun_on_rank1_at_critic_step(tmp_path, 3, "raise FlagError('--simulated: bad thing on rank 1')",
                                            args(synth, tmp_path / 'f', 2, '--num_iters', '1000'))
    assert proc.returncode != 0
    assert 'error (rank 1): --simulated: bad thing on rank 1' in proc.stderr    # the rank's own message
    root_cause = proc.stderr[proc.stderr.index('Root Cause'):]
    assert 'rank      : 1' in root_cause and 'bad thing on rank 1' in root_cause   # and torchrun's summary
    assert not checkpoint.list_checkpoints(str(tmp_path / 'f' / 'models'))


def test_a_signal_on_one_rank_stops_all_at_the_next_check(synth, tmp_path):
    """SIGTERM reaches rank 1 alone during iteration 8; the ranks agree on it at iteration 10
    (solver.SIGNAL_CHECK_EVERY; the log steps are 7 and 14), save one checkpoint and stop."""
    out = tmp_path / 's'
    proc = torchrun_on_rank1_at_critic_step(tmp_path, 8, 'os.kill(os.getpid(), signal.SIGTERM)',
                                            args(synth, out, 2, '--num_iters', '1000', '--log_step', '7',
                                                 '--model_save_step', '1000'))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'stopped (rank 0): SIGTERM: stopped after iteration 10' in log, log[-3000:]
    assert 'stopped (rank 1): SIGTERM: stopped after iteration 10' in log           # rank 0 was never signalled
    saved = checkpoint.list_checkpoints(str(out / 'models'))
    assert [it for it, _ in saved] == [10]
    fps = checkpoint.load(saved[0][1])['rank_fingerprints']
    assert len(fps) == 2 and fps[0] == fps[1]


def test_ganmut_trains_on_two_ranks(tmp_path):
    out = tmp_path / 'gm'
    log = torchrun(['--mode', 'train', '--model', 'ganmut', '--dataset', 'synthetic', '--synthetic_dir',
                    str(tmp_path / 'data'), '--synthetic_images', '60', '--batch_size', '4', '--outputs_dir', str(out),
                    '--image_size', '32', '--g_conv_dim', '8', '--d_conv_dim', '8', '--g_repeat_num', '1',
                    '--d_repeat_num', '3', '--num_iters', '4', '--model_save_step', '2', '--sample_step', '4'])
    assert log.count('distributed: world size 2 (gloo)') == 1
    assert log.count('generating 60 synthetic faces') == 1           # rank 0 wrote the data, rank 1 waited
    first, last = (checkpoint.load(checkpoint.path_for(str(out / 'models'), it)) for it in (2, 4))
    assert last['model'] == 'ganmut' and len(set(last['rank_fingerprints'])) == 1
    assert any(not torch.equal(t, last['D'][k]) for k, t in first['D'].items())   # and it trains
