"""GANmut end to end (tiny models, 32 px): training of both spaces writes checkpoints, samples
and the plane map; resume; test-mode edits; eval; the original GANmut flags; the emotion CSV loader."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY_MODEL, assert_resumed, quick_reader

import data_loader as dl
import main
import synthetic_faces as sf
from ganmut import edit as ganmut_animate
from ganmut import space as ganmut
from utils import checkpoint

TINY = TINY_MODEL + ['--log_step', '2', '--synthetic_images', '64', '--num_iters_decay', '2',
                     '--eval_pairs', '14', '--eval_step_pairs', '7']


@pytest.fixture(scope='module')
def synth_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synthetic'))
    sf.write_dataset(root, 64, 32, seed=0, verbose=False)
    return root


@pytest.fixture(autouse=True)
def quick_eval_reader(monkeypatch):
    quick_reader(monkeypatch)


def train(synth_dir, out, *extra):
    rc = main.main(['--mode', 'train', '--model', 'ganmut', '--dataset', 'synthetic', '--synthetic_dir', synth_dir,
                    '--outputs_dir', str(out)] + TINY + list(extra))
    assert rc == 0
    return out


def scalar_tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return set(acc.Tags()['scalars']), set(acc.Tags()['images'])


@pytest.mark.parametrize('param, extra', [
    ('linear', []),
    ('gaussian', ['--regularization_type', 'R1', '--attention', 'false']),
    ('linear', ['--emotion_dim', '3', '--cycle_loss', 'original', '--info_moves_space', 'true']),
])
def test_short_run_writes_checkpoints_samples_and_plane(synth_dir, tmp_path, param, extra):
    out = train(synth_dir, tmp_path / 'run', '--parametrization', param, '--num_iters', '4',
                '--sample_step', '2', '--model_save_step', '2', *extra)
    assert [it for it, _ in checkpoint.list_checkpoints(str(out / 'models'))] == [2, 4]
    ck = checkpoint.load(checkpoint.find(str(out / 'models')))
    assert ck['model'] == 'ganmut' and ck['config']['parametrization'] == param
    dim = 3 if '--emotion_dim' in extra else 2
    space = ganmut.make_space(param, 7, dim)
    space.load_state_dict(ck['space'])                       # the space is saved with G
    assert ck['G']['main.0.weight'].shape[1] == 3 + dim       # the code is the condition
    assert ck['D']['cls.weight'].shape[0] == 7 and ck['D']['code.weight'].shape[0] == dim
    assert ('attn.0.weight' in ck['G']) == ('--attention' not in extra)
    files = sorted(os.listdir(out / 'samples'))
    for it in (2, 4):
        assert {f'{it:08d}-samples.png', f'{it:08d}-plane.png', f'{it:08d}-space.txt'} <= set(files)
    plane = np.asarray(Image.open(out / 'samples' / '00000004-plane.png'))
    assert plane.shape[1] > 2 * 9 * 32 and plane.std() > 10
    samples = np.asarray(Image.open(out / 'samples' / '00000004-samples.png'))
    assert samples.shape[0] > 7 * 32                          # a row per emotion
    text = (out / 'samples' / '00000004-space.txt').read_text()
    assert 'happy' in text and ('--theta' in text if param == 'linear' and dim == 2 else True)
    scalars, images = scalar_tags(out / 'logs')
    assert {'D/loss', 'D/cls', 'D/reg', 'G/loss', 'G/rec', 'lr/G'} <= scalars
    if param == 'linear':
        assert {'G/strength', 'G/info', 'D/info'} <= scalars
        assert ('space/theta_deg/happy' if dim == 2 else 'space/axis_z/happy') in scalars
    else:
        assert {'G/kl', 'G/pred', 'D/expr', 'space/mean_x/happy', 'space/cov_xy/anger'} <= scalars
    assert {'samples', 'plane'} <= images


def test_resume_matches_uninterrupted_run(synth_dir, tmp_path, capsys):
    args = ['--parametrization', 'gaussian', '--num_iters', '6', '--sample_step', '100', '--model_save_step', '2']
    full = train(synth_dir, tmp_path / 'full', *args)
    part = tmp_path / 'part' / 'models'
    part.mkdir(parents=True)
    os.link(checkpoint.path_for(str(full / 'models'), 2), checkpoint.path_for(str(part), 2))
    capsys.readouterr()
    train(synth_dir, tmp_path / 'part', *args, '--resume_iters', 'latest')
    assert_resumed(capsys.readouterr().out, checkpoint.path_for(str(full / 'models'), 2),
                   checkpoint.path_for(str(part), 2), 2)
    a = checkpoint.load(checkpoint.path_for(str(full / 'models'), 6))
    b = checkpoint.load(checkpoint.path_for(str(part), 6))
    for key in ('G', 'D', 'space'):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f'{key}.{name} differs after resume'
    assert not torch.equal(a['space']['raw_means'], checkpoint.load(
        checkpoint.path_for(str(full / 'models'), 2))['space']['raw_means'])   # the space learns


def test_resume_refuses_another_space(synth_dir, tmp_path, capsys):
    out = train(synth_dir, tmp_path / 'r', '--num_iters', '2', '--model_save_step', '2', '--sample_step', '100')
    rc = main.main(['--mode', 'train', '--model', 'ganmut', '--dataset', 'synthetic', '--synthetic_dir', synth_dir,
                    '--outputs_dir', str(out), '--resume_iters', 'latest', '--num_iters', '4',
                    '--parametrization', 'gaussian'] + TINY)
    assert rc == 2
    assert '--parametrization: checkpoint linear, now gaussian' in capsys.readouterr().err


@pytest.fixture(scope='module')
def trained(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('trained')
    return train(synth_dir, out, '--num_iters', '4', '--model_save_step', '4', '--sample_step', '100')


def _test(trained, results, *extra):
    # no --model: test mode dispatches on the checkpoint's model
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_num_faces', '2',
                    '--test_results_dir', str(results)] + list(extra))
    assert rc == 0
    return results


def test_edits_by_code_and_by_name(trained, tmp_path):
    polar = _test(trained, tmp_path / 'polar', '--theta', '40', '--rho', '0.8')
    named = _test(trained, tmp_path / 'named', '--emotion', 'Happy', '--intensity', '1')
    point = _test(trained, tmp_path / 'point', '--x', '-0.9', '--y', '0.2')
    outs = []
    for res in (polar, named, point):
        edited = sorted(f for f in os.listdir(res) if f.endswith('_edited.png'))
        assert len(edited) == 2 and (res / 'edits.png').exists()
        outs.append(np.asarray(Image.open(res / edited[0])))
        assert outs[-1].shape == (32, 32, 3)
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])
    info = json.loads((named / 'edit.json').read_text())
    ck = checkpoint.load(checkpoint.find(str(trained / 'models')))
    space = ganmut.make_space('linear', 7)
    space.load_state_dict(ck['space'])
    assert np.allclose(info['code'], space.code_for('happy', 1.0).tolist(), atol=1e-6)   # the axis of happy


def test_every_emotion_and_wheel(trained, tmp_path):
    res = _test(trained, tmp_path / 'all')
    assert (res / 'grid.png').exists() and (res / 'plane.png').exists()
    face = next(d for d in os.listdir(res) if (res / d).is_dir())
    assert sorted(os.listdir(res / face)) == sorted(f'{n}.png' for n in ganmut.emotion_names(7))
    res = _test(trained, tmp_path / 'wheel', '--emotion_wheel', '--wheel_frames', '8')
    gifs = [f for f in os.listdir(res) if f.endswith('.gif') and f != 'all_faces.gif']
    assert len(gifs) == 2 and (res / 'all_faces.gif').exists() and (res / 'grid.png').exists()
    with Image.open(res / gifs[0]) as gif:
        assert gif.n_frames == 8 and gif.size == (32, 32)
    codes = np.loadtxt(res / 'wheel_codes.txt')
    assert codes.shape == (8, 3) and np.allclose(np.hypot(codes[:, 1], codes[:, 2]), 1.0, atol=1e-4)


def test_edit_flags_errors():
    space = ganmut.LinearSpace(7)
    edit = SimpleNamespace(theta=None, rho=None, x=None, y=None, z=None, emotion=None, intensity=None)
    assert ganmut_animate.edit_code(edit, space) is None
    for bad, msg in [(dict(theta=10, emotion='happy'), 'alternatives'), (dict(intensity=0.5), 'goes with --emotion'),
                     (dict(emotion='joy'), "unknown emotion 'joy'"), (dict(x=0.1, z=0.3), '3-D space')]:
        with pytest.raises(ValueError, match=msg):
            ganmut_animate.edit_code(SimpleNamespace(**{**vars(edit), **bad}), space)
    with pytest.raises(ValueError, match='2-D space'):
        ganmut_animate.edit_code(SimpleNamespace(**{**vars(edit), 'theta': 10}), ganmut.GaussianSpace(7, 3))
    code, _ = ganmut_animate.edit_code(SimpleNamespace(**{**vars(edit), 'theta': 90, 'rho': 0.5}), space)
    assert torch.allclose(code, torch.tensor([0.0, 0.5]), atol=1e-6)


def test_demo_path_train_test_eval_and_eval_step(synth_dir, tmp_path):
    out = tmp_path / 'demo'
    rc = main.main(['--mode', 'demo', '--model', 'ganmut', '--parametrization', 'gaussian', '--synthetic_dir',
                    synth_dir, '--outputs_dir', str(out), '--num_iters', '4', '--sample_step', '4',
                    '--model_save_step', '4', '--eval_step', '2', '--test_num_faces', '2'] + TINY)
    assert rc == 0
    curve = [json.loads(line) for line in open(out / 'results' / 'eval_curve.jsonl')]
    assert [c['iteration'] for c in curve] == [2, 4] and all('emotion_accuracy' in c for c in curve)
    assert (out / 'results' / 'grid.png').exists() and (out / 'results' / 'plane.png').exists()
    res = json.loads((out / 'results' / 'eval_00000004.json').read_text())
    names = ganmut.emotion_names(7)
    assert res['emotions'] == names and res['parametrization'] == 'gaussian' and res['faces'] == 2
    for key in ('emotion_accuracy', 'reader_accuracy_truth', 'reader_accuracy_held_out', 'edit_error_reduction',
                'identity_l1', 'identity_l1_baseline'):
        assert 0 <= res[key] <= 1 or key == 'edit_error_reduction'
    for key in ('l1', 'psnr', 'ssim', 'emotion_accuracy'):
        assert key in res['model'] and key in res['baseline']
    m = np.array(res['confusion']['model'])
    assert m.shape == (7, 7) and (m.sum(1) == 2).all()
    acc = [res['per_emotion'][n]['accuracy'] for n in names]
    assert np.allclose(acc, np.diag(m) / 2) and np.isclose(np.mean(acc), res['emotion_accuracy'])
    assert {'l1', 'baseline_l1', 'reader_accuracy_truth', 'baseline_accuracy'} <= set(res['per_emotion']['sad'])
    assert (out / 'results' / 'eval_00000004_grid.png').exists()
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['lambda_cls'] == 1.0 and cfg['cycle_loss'] == 'original' and cfg['g_conv_dim'] == 8
    # eval mode on its own, without --model: dispatch on the checkpoint
    os.remove(out / 'results' / 'eval_00000004.json')
    assert main.main(['--mode', 'eval', '--outputs_dir', str(out), '--eval_pairs', '7']) == 0
    assert json.loads((out / 'results' / 'eval_00000004.json').read_text())['faces'] == 1


def write_emotion_dataset(root, n, size, ext, code):
    """root/imgs/<i><ext> rendered with emotion code(i) % 8, and root/training.csv with code(i)."""
    (root / 'imgs').mkdir(parents=True)
    rows = ['subDirectory_filePath,expression']
    for i in range(n):
        Image.fromarray(sf.render(sf.sample_identity(i), sf.emotion_prototype(code(i) % 8, 4.0), size)).save(
            root / 'imgs' / f'{i}{ext}')
        rows.append(f'imgs/{i}{ext},{code(i)}')
    (root / 'training.csv').write_text('\n'.join(rows) + '\n')


def test_emotion_csv_skips_affectnet_codes_and_classes_past_c_dim(tmp_path):
    root = tmp_path / 'dataset'
    write_emotion_dataset(root, 22, 32, '.jpg', lambda i: i % 11)   # 8 None, 9 Uncertain, 10 No-Face
    ds = dl.emotion_dataset(str(root / 'imgs'), str(root / 'training.csv'), 32, c_dim=7)
    assert sorted(set(ds.labels.tolist())) == list(range(7)) and len(ds) == 14
    ds = dl.emotion_dataset(str(root / 'imgs'), str(root / 'training.csv'), 32, c_dim=8)
    assert max(ds.labels.tolist()) == 7 and len(ds) == 16      # never 8, 9, 10
    ds = dl.emotion_dataset(str(root / 'imgs'), str(root / 'training.csv'), 32, c_dim=4)
    assert ds.labels.max() == 3 and len(ds) == 8


def test_seed_style_flags(tmp_path, capsys):
    """The GANmut README's command: --dataset_root/--imgs_folder and the folder flags, no --model."""
    root = tmp_path / 'dataset'
    write_emotion_dataset(root, 12, 40, '.png', lambda i: 9 if i == 11 else i % 4)
    d = tmp_path / 'GANmut'
    seed = ['--dataset_root', str(root), '--imgs_folder', 'imgs', '--c_dim', '4',
            '--sample_dir', str(d / 'samples'), '--log_dir', str(d / 'logs'), '--model_save_dir', str(d / 'models'),
            '--result_dir', str(d / 'results'), '--outputs_dir', str(tmp_path / 'run')]
    small = [a for a in TINY if a not in ('--synthetic_images', '64')]
    assert main.main(seed + small + ['--num_iters', '2', '--model_save_step', '2', '--sample_step', '2']) == 0
    assert 'using --model ganmut' in capsys.readouterr().out
    ck = checkpoint.load(checkpoint.find(str(d / 'models')))
    assert ck['label_names'] == ['neutral', 'happy', 'sad', 'surprise'] and ck['D']['cls.weight'].shape[0] == 4
    assert os.listdir(d / 'samples') and os.listdir(d / 'logs')
    assert main.main(seed + small + ['--num_iters', '4', '--model_save_step', '2', '--resume_iter', '2']) == 0
    assert [it for it, _ in checkpoint.list_checkpoints(str(d / 'models'))] == [2, 4]
    assert main.main(['--mode', 'test', '--model_save_dir', str(d / 'models'), '--result_dir', str(d / 'results'),
                      '--emotion', 'sad', '--test_images_dir', str(root / 'imgs')]) == 0
    assert len([f for f in os.listdir(d / 'results') if f.endswith('_edited.png')]) == 12


def test_model_specific_defaults():
    parser = main.build_parser()

    def parse(*argv):
        cfg = parser.parse_args(list(argv))
        main.setup_ganmut(cfg, main.explicit_flags(parser, list(argv)))
        return cfg
    g = parse()
    assert g.model == 'ganimation' and g.lambda_cls == 160.0 and g.c_dim == 17
    # GANimation's measured defaults (main.py, docs/training.md), not the original code's
    assert (g.lambda_smooth, g.n_critic, g.g_lr, g.d_lr, g.lambda_cls_end) == (1.0, 1, 2e-4, 2e-4, 20.0)
    m = parse('--model', 'ganmut')
    assert (m.lambda_cls, m.c_dim, m.n_critic, m.model_save_step, m.cycle_loss) == (1.0, 7, 5, 2000, 'approximate')
    assert (m.g_lr, m.d_lr, m.lambda_smooth) == (1e-4, 1e-4, 1e-4)   # the released code's, unchanged
    assert m.outputs_dir == 'outputs/ganmut' and m.attention == 'true' and m.regularization_type == 'gp'
    assert m.info_moves_space == 'false'
    m = parse('--parametrization', 'gaussian', '--lambda_cls', '2', '--regularization_type', 'R1')
    assert (m.model, m.lambda_cls, m.cycle_loss, m.regularization_type) == ('ganmut', 2.0, 'original', 'r1')
    assert parse('--model', 'ganmut', '--resume_iter', '7').resume_iters == '7'


def test_in_test_mode_the_checkpoints_model_decides_which_flags_apply(trained, tmp_path, capsys):
    """A GANimation-only flag with a GANmut checkpoint is refused, naming the checkpoint, not ignored."""
    capsys.readouterr()
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_results_dir', str(tmp_path / 'r'),
                    '--target_aus', 'AU12=4'])
    err = capsys.readouterr().err
    assert rc == 2 and '--target_aus is a GANimation option; it does not apply to GANmut (the model of' in err
    assert 'iter_00000004.ckpt' in err and not (tmp_path / 'r').exists()


def test_rare_emotions_are_named_with_their_share():
    from ganmut.solver import rare_emotions_note
    names = ganmut.emotion_names(7)
    muxspace = np.array([5965, 4776, 174, 320, 15, 80, 217])       # the muxspace photos' training split
    note = rare_emotions_note(names, muxspace, 0.0)
    assert note == ('note: few training images of fear (15, 0.1%), disgust (80, 0.7%): --repeat_threshold 0.1 '
                    'would draw them more often')
    assert rare_emotions_note(names, muxspace, 0.2).endswith('--repeat_threshold 0.2 draws them more often')
    assert rare_emotions_note(names, np.array([10, 10, 10, 10, 10, 10, 0]), 0.0) is None    # none is rare; 0: warned
