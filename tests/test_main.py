"""The entry point: the GANimation demo (the README's main command) with its settings and the flags
that override them, and how --dataset finds the data (auto, a dataset folder)."""
import argparse
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from tiny import TINY_MODEL, quick_reader

import data_loader as dl
import main
import solver
import synthetic_faces as sf
from utils.errors import FlagError


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic')
    sf.write_dataset(str(root), 48, 32, seed=5, verbose=False)
    return root


def test_demo_trains_animates_and_scores_with_its_settings_under_the_given_flags(tmp_path, monkeypatch, synth, capsys):
    from utils import checkpoint
    quick_reader(monkeypatch)
    reads, real_load = [], checkpoint.load
    monkeypatch.setattr(checkpoint, 'load', lambda path, *a, **k: reads.append(os.path.basename(path))
                        or real_load(path, *a, **k))
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'data' / 'celeba' / 'images').mkdir(parents=True)   # the demo stays on the synthetic faces
    out = tmp_path / 'demo'
    given = ['--synthetic_dir', str(synth), '--synthetic_images', '48', '--outputs_dir', str(out),
             '--num_iters', '4', '--eval_step', '2', '--eval_step_pairs', '8', '--eval_pairs', '16',
             '--test_num_faces', '2'] + TINY_MODEL
    assert main.main(['--mode', 'demo'] + given) == 0
    said = capsys.readouterr().out         # another architecture than the pretrained generator's: not shown first
    assert 'note: the pretrained demo generator is not shown first: it has g_conv_dim 32, this demo 8' in said
    assert not (out / 'pretrained').exists()
    cfg = json.loads((out / 'config.json').read_text())
    flags = main.build_parser()
    named = main.explicit_flags(flags, given)
    for key, value in main.DEMO.items():     # the demo's value wherever no flag gave one
        if key not in named and key != 'train_minutes':
            assert cfg[key] == value, key
    assert cfg['train_minutes'] == 0         # --num_iters: the demo's length in iterations, not minutes
    assert (cfg['image_size'], cfg['g_conv_dim'], cfg['num_iters'], cfg['outputs_dir']) == (32, 8, 4, str(out))
    assert cfg['dataset'] == 'synthetic' and cfg['image_dir'] == os.path.join(str(synth), 'images')
    # trained: the last iteration's checkpoint (the demo's cadence, 500, is longer than the run)
    assert sorted(os.listdir(out / 'models')) == ['iter_00000004.ckpt']
    assert [r for r in reads if r.startswith('iter_')] == ['iter_00000004.ckpt']   # once, for test and eval
    # test mode: the reference sequence on top of the two faces' rows, a GIF per face
    results = out / 'results'
    gifs = sorted(f for f in os.listdir(results) if f.endswith('.gif'))
    assert len(gifs) == 3 and 'all_faces.gif' in gifs
    assert Image.open(results / 'grid.png').size[1] == 3 * 32 + 4 * 2
    # eval mode and the training probes
    scored = json.loads((results / 'eval_00000004.json').read_text())
    assert scored['pairs'] == 16 and scored['iteration'] == 4
    assert scored['edit_error_reduction'] == pytest.approx(1 - scored['model']['l1'] / scored['baseline']['l1'])
    curve = [json.loads(line) for line in open(results / 'eval_curve.jsonl')]
    assert [c['iteration'] for c in curve] == [2, 4] and all(c['pairs'] == 8 for c in curve)


def resolve(*argv):
    cfg = main.build_parser().parse_args(list(argv))
    what = dl.resolve_data(cfg, 'au')
    return cfg, what


def test_dataset_auto_takes_data_celeba_when_there_is_one(tmp_path, monkeypatch, synth):
    monkeypatch.chdir(tmp_path)
    celeba = tmp_path / 'data' / 'celeba'
    shutil.copytree(synth / 'images', celeba / 'img_align_celeba')
    shutil.copy(synth / 'aus.txt', celeba / 'list_attr_celeba.txt')
    shutil.copy(synth / 'aus_openface.pkl', celeba / 'aus_openface.pkl')
    cfg, what = resolve()
    assert (cfg.image_dir, cfg.attr_path, cfg.dataset_kind) == (
        'data/celeba/img_align_celeba', 'data/celeba/list_attr_celeba.txt', 'folder')
    os.remove(celeba / 'list_attr_celeba.txt')
    cfg, _ = resolve('--dataset', 'auto')
    assert cfg.attr_path == 'data/celeba/aus_openface.pkl'
    # and trains on it
    out = tmp_path / 'run'
    assert main.main(['--mode', 'train', '--outputs_dir', str(out), '--num_iters', '2', '--sample_step', '100',
                      '--model_save_step', '2'] + TINY_MODEL) == 0
    config = json.loads((out / 'config.json').read_text())
    assert (config['image_dir'], config['attr_path']) == ('data/celeba/img_align_celeba',
                                                          'data/celeba/aus_openface.pkl')


def test_dataset_auto_without_data_celeba_generates_the_synthetic_faces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synthetic = tmp_path / 'synthetic'
    cfg, what = resolve('--synthetic_dir', str(synthetic), '--synthetic_images', '24', '--image_size', '32')
    assert (cfg.image_dir, cfg.attr_path, cfg.dataset_kind) == (
        str(synthetic / 'images'), str(synthetic / 'aus.txt'), 'synthetic')
    assert len(os.listdir(synthetic / 'images')) == 24 and 'synthetic faces (24 images' in what
    assert not (tmp_path / 'data').exists()


def test_dataset_folder_is_searched_for_images_and_labels(tmp_path, synth):
    folder = tmp_path / 'mine'
    shutil.copytree(synth / 'images', folder / 'imgs')
    shutil.copy(synth / 'aus.txt', folder / 'my_labels.txt')      # no standard name: the first .txt
    shutil.copy(synth / 'aus.txt', folder / 'z_other.txt')
    cfg, what = resolve('--dataset', str(folder))
    assert (cfg.image_dir, cfg.attr_path, cfg.dataset_kind) == (
        str(folder / 'imgs'), str(folder / 'my_labels.txt'), 'folder')
    shutil.copy(synth / 'aus.txt', folder / 'aus.txt')            # the standard name wins
    shutil.copytree(synth / 'images', folder / 'images')          # images/ before imgs/
    assert resolve('--dataset', str(folder))[0].attr_path == str(folder / 'aus.txt')
    assert resolve('--dataset', str(folder))[0].image_dir == str(folder / 'images')
    cfg, _ = resolve('--dataset', str(synth))                       # a copy of the synthetic faces
    assert cfg.dataset_kind == 'synthetic' and cfg.attr_path == str(synth / 'aus.txt')
    for name in ('my_labels.txt', 'z_other.txt', 'aus.txt'):
        os.remove(folder / name)
    with pytest.raises(FlagError, match='expected an images/'):
        resolve('--dataset', str(folder))
    with pytest.raises(FlagError, match='no such folder'):
        resolve('--dataset', str(tmp_path / 'missing'))


def a_value_for(flag):
    """The command-line words that give `flag` a value it accepts (its default, or one of its type)."""
    action = next(a for a in main.build_parser()._actions if a.dest == flag)
    if isinstance(action, argparse._StoreTrueAction):
        return [f'--{flag}']
    if action.default is not None:
        return [f'--{flag}', str(action.default)]
    return [f'--{flag}', 'happy' if action.type is str else '0.5']


@pytest.mark.parametrize('model_name, flag', [('ganmut', f) for f in main.GANIMATION_ONLY]
                         + [('ganimation', f) for f in main.GANMUT_ONLY])
def test_a_flag_of_the_other_model_is_refused_not_ignored(model_name, flag, tmp_path, capsys):
    # were the refusal gone, this would train one iteration of a tiny model in tmp_path and return 0
    rc = main.main(['--mode', 'train', '--model', model_name, '--outputs_dir', str(tmp_path / 'run'),
                    '--synthetic_dir', str(tmp_path / 'synth'), '--synthetic_images', '24', '--num_iters', '1']
                   + TINY_MODEL + a_value_for(flag))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f'error: --{flag} is a ') and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'synth').exists()


def test_every_flag_belongs_to_one_model_or_both():
    flags = {a.dest for a in main.build_parser()._actions if a.option_strings and a.dest != 'help'}
    assert set(main.GANIMATION_ONLY) <= flags and set(main.GANMUT_ONLY) <= flags
    assert not set(main.GANIMATION_ONLY) & set(main.GANMUT_ONLY)


def test_help_fits_160_lines_with_one_line_per_option(capsys):
    with pytest.raises(SystemExit) as stop:
        main.main(['--help'])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= 160, len(lines)
    for action in main.build_parser()._actions:
        flag = action.option_strings[-1]
        shown = [line for line in lines if line.startswith(f'  {flag} ')]
        assert len(shown) == 1 and action.help in shown[0], flag            # one line, with its help
        if main.shows_default(action):
            assert shown[0].endswith(f'[{action.default}]'), flag            # and its default
    line = {w.split()[0]: w for w in lines if w.startswith('  --')}
    assert line['--seed'].endswith('[0]') and line['--eval_step'].endswith('[0]')      # zero is a default too
    assert line['--lambda_cls'].endswith('[160.0]') and line['--mode'].endswith('[train]')
    assert not line['--virtual'].endswith(']') and not line['--image_dir'].endswith(']')   # switch, empty


def test_compile_true_is_refused_for_ganmut_whose_generator_runs_eagerly(tmp_path, capsys):
    rc = main.main(['--mode', 'train', '--model', 'ganmut', '--compile', 'true', '--outputs_dir', str(tmp_path / 'run'),
                    '--synthetic_dir', str(tmp_path / 'synth'), '--synthetic_images', '24', '--num_iters', '1']
                   + TINY_MODEL)
    assert rc == 2 and capsys.readouterr().err.startswith('error: --compile true: GANmut')
    assert not (tmp_path / 'run' / 'models').exists()


def test_the_pretrained_demo_generator_in_the_repository():
    """pretrained/: the demo's generator in fp16, a couple of MB, with nothing of the machine that trained it."""
    import torch

    from model import GENERATOR_SHAPE, PRETRAINED_DEMO, Trained
    assert os.path.getsize(PRETRAINED_DEMO) < 3 * 2 ** 20
    trained = Trained.newest(PRETRAINED_DEMO)
    assert trained.model == 'ganimation' and 'D' not in trained.ckpt and 'g_optim' not in trained.ckpt
    assert all(v.dtype == torch.float16 for v in trained.ckpt['G'].values() if v.is_floating_point())
    assert all(trained.config[k] == main.DEMO.get(k, trained.config[k]) for k in GENERATOR_SHAPE)
    assert trained.config['image_dir'] == 'data/synthetic/images' and trained.iteration > 5000
    readme = open(os.path.join(os.path.dirname(PRETRAINED_DEMO), 'README.md')).read()
    assert f'--num_iters {trained.iteration} ' in readme            # the command that made it is beside it


def test_the_demo_shows_the_pretrained_generator_first(tmp_path, synth, capsys):
    from editing import animate
    from utils.records import STAGES
    cfg = main.build_parser().parse_args(['--mode', 'demo'])
    for key, value in main.DEMO.items():
        setattr(cfg, key, value)
    cfg.dataset, cfg.synthetic_dir, cfg.synthetic_images = 'synthetic', str(synth), 48
    cfg.outputs_dir, cfg.test_num_faces = str(tmp_path / 'demo'), 2
    grid = animate.pretrained_preview(cfg)
    assert grid == str(tmp_path / 'demo' / 'pretrained' / 'grid.png')
    assert Image.open(grid).size[1] == 3 * 32 + 4 * 2                      # the reference and the two faces
    assert 'the pretrained demo generator (' in capsys.readouterr().out and 'pretrained preview' in STAGES.seconds
    assert cfg.image_dir == ''                                             # the demo's own flags as they were
    with Image.open(tmp_path / 'demo' / 'pretrained' / 'all_faces.gif') as gif:
        frames = []
        for k in (0, 7, 14, 28):                                           # neutral, happy, surprise, anger
            gif.seek(k)
            frames.append(np.asarray(gif.convert('RGB'), dtype=float)[:, 32:])   # the faces, not the reference
    moved = [int((np.abs(f - frames[0]).max(-1) > 20).sum()) for f in frames[1:]]
    assert min(moved) >= 8, moved              # pixels changed from neutral: the smile, raised brows, lowered ones


def test_train_minutes_sets_the_length_from_the_measured_speed_and_repeats_as_num_iters(tmp_path, monkeypatch,
                                                                                         synth, capsys):
    import torch

    from utils import checkpoint
    from utils.records import STAGES
    quick_reader(monkeypatch)
    real_run = solver.TrainingPath.run
    timed = []
    monkeypatch.setattr(solver.TrainingPath, 'run',          # the speed check's clock reads 0.5 s per iteration
                        lambda self, n: timed.append(n) or real_run(self, n) * 0 + 0.5 * n)
    common = ['--synthetic_dir', str(synth), '--synthetic_images', '48', '--eval_step_pairs', '8',
              '--eval_pairs', '16', '--test_num_faces', '1', '--model_save_step', '1000'] + TINY_MODEL
    budgeted = tmp_path / 'budget'
    STAGES.seconds['an earlier command'] = 1.0              # in this process: not this demo's stage
    assert main.main(['--mode', 'demo', '--outputs_dir', str(budgeted), '--train_minutes', '0.1'] + common) == 0
    out = capsys.readouterr().out
    cfg = json.loads((budgeted / 'config.json').read_text())
    # 6 s less the share kept for samples, checkpoints and evals, at 0.5 s each; the decay keeps the demo's share
    iters = int(0.1 * 60 * (1 - solver.BUDGET_EXTRAS) / 0.5)
    share = main.DEMO['num_iters_decay'] / main.DEMO['num_iters']
    assert (cfg['num_iters'], cfg['num_iters_decay']) == (iters, round(iters * share)) and timed == [3, 6]
    assert f'-> {iters} iterations (--num_iters {iters} --num_iters_decay {round(iters * share)} repeats' in out
    assert 'compile True' not in out                        # a run of minutes is not compiled on the CPU
    stages = [line for line in out.splitlines() if line.startswith('demo done in')]
    assert len(stages) == 1
    # every stage this demo ran, in order, and no other (the tiny architecture skips the pretrained preview;
    # the AU reader is a stage where it was fitted, not where an earlier test left it in the data's cache)
    names = re.findall(r'(?:: |, )([a-zA-Z ]+?) (?:\d+ min )?\d+ s', stages[0])
    assert names in (['data', 'speed check', 'training', 'test mode', 'eval'],
                     ['data', 'speed check', 'AU reader', 'training', 'test mode', 'eval']), names
    # the speed check ran on a copy: the same run as --num_iters N, weight for weight
    repeated = tmp_path / 'repeat'
    assert main.main(['--mode', 'train', '--outputs_dir', str(repeated), '--num_iters', str(iters),
                      '--num_iters_decay', str(round(iters * share)), '--lambda_gp', '1', '--d_local_head', '1']
                     + common) == 0
    a = checkpoint.load(str(budgeted / 'models' / f'iter_{iters:08d}.ckpt'))
    b = checkpoint.load(str(repeated / 'models' / f'iter_{iters:08d}.ckpt'))
    assert all(torch.equal(a['G'][k], b['G'][k]) for k in a['G'])
    # resumed, the run keeps the length it was planned with (another speed check would choose another)
    monkeypatch.setattr(solver.TrainingPath, 'run', lambda self, n: 5.0 * n)
    assert main.main(['--mode', 'train', '--outputs_dir', str(budgeted), '--train_minutes', '0.1',
                      '--resume_iters', 'latest', '--lambda_gp', '1', '--d_local_head', '1'] + common) == 0
    assert f'resuming a run planned for {iters} iterations' in capsys.readouterr().out


@pytest.mark.parametrize('argv, problem', [
    (['--mode', 'train', '--train_minutes', '5', '--num_iters', '100'], 'give one of them'),
    (['--mode', 'demo', '--train_minutes', '5', '--num_iters', '100'], 'give one of them'),
    (['--mode', 'test', '--train_minutes', '5'], 'nothing is trained in --mode test'),
    (['--mode', 'bench', '--train_minutes', '5'], 'nothing is trained in --mode bench')])
def test_train_minutes_is_refused_with_num_iters_and_where_nothing_trains(argv, problem, tmp_path, capsys):
    rc = main.main(argv + ['--outputs_dir', str(tmp_path / 'run'), '--synthetic_dir', str(tmp_path / 's')])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith('error: --train_minutes') and problem in err, err
    assert not (tmp_path / 'run').exists() and not (tmp_path / 's').exists()


def test_stages_count_an_inner_stage_for_itself_only(monkeypatch):
    from utils import records
    clock = iter([0.0, 10.0, 40.0, 100.0, 100.0, 101.5])
    monkeypatch.setattr(records.time, 'perf_counter', lambda: next(clock))
    stages = records.Stages()
    with stages.timed('eval'):
        with stages.timed('AU reader'):     # 10 s to 40 s, inside eval (0 s to 100 s)
            pass
    with stages.timed('test mode'):         # 1.5 s
        pass
    assert stages.seconds == {'AU reader': 30.0, 'eval': 70.0, 'test mode': 1.5}
    assert stages.summary() == 'AU reader 30 s, eval 1 min 10 s, test mode 2 s'
    assert records.duration(0.4) == '0 s' and records.duration(3599.6) == '60 min 00 s'
