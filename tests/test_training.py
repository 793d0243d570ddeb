"""End-to-end: short training runs, checkpoints, resume, test mode (tiny models, 32 px)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY_MODEL, assert_resumed

import data_loader as dl
import main
import model
from editing import animate
from utils import checkpoint

TINY = TINY_MODEL + ['--log_step', '2', '--synthetic_images', '48']


@pytest.fixture(scope='module')
def synth_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('synthetic'))


def run(synth_dir, out, *extra):
    rc = main.main(['--mode', 'train', '--dataset', 'synthetic', '--synthetic_dir', synth_dir,
                    '--outputs_dir', str(out)] + TINY + list(extra))
    assert rc == 0
    return out


def test_short_run_writes_everything(synth_dir, tmp_path):
    out = run(synth_dir, tmp_path / 'run', '--num_iters', '6', '--num_iters_decay', '3',
              '--sample_step', '3', '--model_save_step', '3', '--keep_checkpoints', '1')
    ckpts = checkpoint.list_checkpoints(str(out / 'models'))
    assert [it for it, _ in ckpts] == [6]                      # keep_checkpoints 1 pruned the older
    assert not [f for f in os.listdir(out / 'models') if f.endswith('.tmp')]
    ck = checkpoint.load(ckpts[0][1])
    assert {'G', 'D', 'g_optim', 'd_optim', 'iteration', 'config', 'rng'} <= set(ck)
    assert ck['iteration'] == 6 and ck['config']['image_size'] == 32
    assert sorted(os.listdir(out / 'samples')) == ['00000003-samples.png', '00000006-samples.png']
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(out / 'logs'))
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['num_iters'] == 6 and cfg['dataset_kind'] == 'synthetic'
    img = np.asarray(Image.open(out / 'samples' / '00000006-samples.png'))
    assert img.shape[0] > 32 * 6 and img.std() > 10


def test_resume_matches_uninterrupted_run(synth_dir, tmp_path, capsys):
    args = ['--num_iters', '8', '--num_iters_decay', '4', '--sample_step', '100', '--model_save_step', '4']
    full = run(synth_dir, tmp_path / 'full', *args)
    # a second run that only has the checkpoint of iteration 4, then resumes
    part = tmp_path / 'part' / 'models'
    part.mkdir(parents=True)
    src = checkpoint.path_for(str(full / 'models'), 4)
    os.link(src, checkpoint.path_for(str(part), 4))
    capsys.readouterr()
    run(synth_dir, tmp_path / 'part', *args, '--resume_iters', 'latest')
    assert_resumed(capsys.readouterr().out, src, checkpoint.path_for(str(part), 4), 4)
    a = checkpoint.load(checkpoint.path_for(str(full / 'models'), 8))
    b = checkpoint.load(checkpoint.path_for(str(part), 8))
    for key in ('G', 'D'):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f'{key}.{name} differs after resume'
    assert a['g_optim']['state'][0]['step'] == b['g_optim']['state'][0]['step']


def test_resume_with_other_shapes_names_the_mismatch(synth_dir, tmp_path, capsys):
    out = run(synth_dir, tmp_path / 'r', '--num_iters', '2', '--model_save_step', '2', '--sample_step', '100')
    rc = main.main(['--mode', 'train', '--dataset', 'synthetic', '--synthetic_dir', synth_dir,
                    '--outputs_dir', str(out), '--resume_iters', 'latest', '--num_iters', '4']
                   + TINY[:2] + ['--g_conv_dim', '16'] + TINY[4:])
    assert rc == 2
    err = capsys.readouterr().err
    assert '--g_conv_dim: checkpoint 8, now 16' in err


@pytest.mark.parametrize('flag, value, seed_value, built', [
    ('--g_warp', '4', '0', lambda G, D: G.warp_cell == 4 and G.flow is not None),
    ('--d_local_head', '2', '0', lambda G, D: D.local is not None and D.local_layers == 2),
    ('--g_condition', 'relative', 'target', lambda G, D: G.relative and G.main[0].in_channels == 3 + 2 * G.c_dim),
])
def test_network_options_are_rebuilt_from_the_checkpoint(synth_dir, tmp_path, capsys, flag, value, seed_value, built):
    out = run(synth_dir, tmp_path / 'opt', '--num_iters', '2', '--model_save_step', '2', '--sample_step', '100',
              flag, value)
    G, D = model.Trained.newest(str(out / 'models')).networks(torch.device('cpu'))
    assert built(G, D)   # test mode and eval build the heads the run trained
    rc = main.main(['--mode', 'train', '--dataset', 'synthetic', '--synthetic_dir', synth_dir,
                    '--outputs_dir', str(out), '--resume_iters', 'latest', '--num_iters', '4'] + TINY)
    assert rc == 2
    assert f'{flag}: checkpoint {value}, now {seed_value}' in capsys.readouterr().err


def test_aus_subset_changes_condition_size(synth_dir, tmp_path, monkeypatch):
    sources = []
    forward = model.Generator.forward

    def spy(G, x, c, c_src=None):
        if torch.is_grad_enabled() and c_src is not None and not sources:   # training's first forward pass
            sources.append(c_src.detach().clone())
        return forward(G, x, c, c_src)
    monkeypatch.setattr(model.Generator, 'forward', spy)
    out = run(synth_dir, tmp_path / 'aus', '--num_iters', '2', '--model_save_step', '2', '--sample_step', '2',
              '--aus', 'AU25,AU12,AU45')
    ck = checkpoint.load(checkpoint.find(str(out / 'models')))
    assert ck['G']['main.0.weight'].shape[1] == 3 + 3
    assert ck['D']['cls.weight'].shape[0] == 3 and ck['label_names'] == ['AU25', 'AU12', 'AU45']
    # the batch's own AUs are rows of those three columns of the table, in that order
    _, au_names, values = dl.read_au_table(os.path.join(synth_dir, 'aus.txt'))
    table = torch.from_numpy(values[:, [au_names.index(a) for a in ('AU25', 'AU12', 'AU45')]] / 5).float()
    assert sources[0].shape == (4, 3)
    assert (sources[0][:, None, :] - table[None]).abs().amax(-1).min(1).values.max() < 1e-6


@pytest.fixture(scope='module')
def trained(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('trained')
    return run(synth_dir, out, '--num_iters', '2', '--model_save_step', '2', '--sample_step', '100')


def test_test_mode_one_gif_per_face_one_frame_per_row(trained, tmp_path):
    faces = tmp_path / 'faces'
    faces.mkdir()
    rng = np.random.default_rng(0)
    for name in ('alice.png', 'bob.jpg'):
        Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(faces / name)
    seq = tmp_path / 'seq.txt'
    seq.write_text(''.join(f'f{i}.png ' + ' '.join(['%.1f' % (i / 2)] * 17) + '\n' for i in range(5)))
    res = tmp_path / 'res'
    rc = main.main(['--mode', 'test', '--test_models_dir', str(trained / 'models'), '--test_images_dir', str(faces),
                    '--test_attributes_path', str(seq), '--test_results_dir', str(res), '--test_batch_size', '2'])
    assert rc == 0
    for name in ('alice', 'bob'):
        with Image.open(res / f'{name}.gif') as gif:
            assert gif.n_frames == 5 and gif.size == (32, 32)
        assert len(os.listdir(res / name)) == 5
    assert (res / 'grid.png').exists()


def test_test_mode_defaults_to_held_out_synthetic_faces(trained, synth_dir):
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_num_faces', '2'])
    assert rc == 0
    gifs = [f for f in os.listdir(trained / 'results') if f.endswith('.gif') and f != 'all_faces.gif']
    assert len(gifs) == 2
    # faces of the held-out identities (test_ids.csv), none that training saw
    stems = {os.path.splitext(f)[0] for f in gifs}
    held_out = {os.path.splitext(n)[0] for n in dl.read_id_list(os.path.join(synth_dir, 'test_ids.csv'))}
    trained_on = {os.path.splitext(n)[0] for n in dl.read_id_list(os.path.join(synth_dir, 'train_ids.csv'))}
    assert stems <= held_out and not stems & trained_on
    # the grid has the rendered reference sequence on top plus one row per face
    assert Image.open(trained / 'results' / 'grid.png').size[1] == 3 * 32 + 4 * 2


def test_target_aus_edit(trained, tmp_path, monkeypatch):
    """--target_aus: the generator gets each face's own AUs as the critic reads them, with the named
    AUs set to the given intensities; the edited faces differ from the inputs."""
    # the critic of a 2-iteration run reads about 1e-4 everywhere: scaled up, its AU head reads
    # clearly different values per AU and face
    ckpt = checkpoint.load(checkpoint.find(str(trained / 'models')))
    ckpt['D']['cls.weight'] *= 3000
    models = tmp_path / 'models'
    checkpoint.save(ckpt, checkpoint.path_for(str(models), ckpt['iteration']))
    calls = []
    forward = model.Generator.forward

    def spy(G, x, c, c_src=None):
        calls.append((x.detach().clone(), c.detach().clone()))
        return forward(G, x, c, c_src)
    monkeypatch.setattr(model.Generator, 'forward', spy)
    results = tmp_path / 'results'
    rc = main.main(['--mode', 'test', '--test_models_dir', str(models), '--test_num_faces', '2',
                    '--target_aus', 'AU12=4,AU25=2', '--test_results_dir', str(results)])
    assert rc == 0
    trained = model.Trained.newest(str(models))
    (_, D), ckpt_cfg, names = trained.networks(torch.device('cpu')), trained.config, trained.label_names
    faces = animate.faces_to_edit(main.build_parser().parse_args(['--test_num_faces', '2']), ckpt_cfg, 32)
    x = torch.from_numpy(np.stack([f for _, f in faces])).permute(0, 3, 1, 2).float() / 127.5 - 1
    read = model.critic_reading(D, x, 'cpu')
    others = [i for i, n in enumerate(names) if n not in ('AU12', 'AU25')]
    assert (read[:, others] > 0.05).sum() >= 6 and not torch.allclose(read[0], read[1], atol=0.01)
    assert len(calls) == 2                                   # one edit per face
    for i, (x_in, c) in enumerate(calls):
        assert torch.allclose(x_in[0], x[i], atol=1e-6)
        assert c[0, names.index('AU12')] == pytest.approx(0.8) and c[0, names.index('AU25')] == pytest.approx(0.4)
        assert torch.allclose(c[0, others], read[i, others], atol=1e-5)
    for name, face in faces:
        edited = np.asarray(Image.open(results / f'{name}_edited.png')).astype(float)
        assert np.abs(edited - face).mean() > 2.0


def test_parse_target_aus_and_errors():
    names = ['AU01', 'AU12', 'AU25']
    assert animate.parse_target_aus('AU12=4, AU25=2.5', names) == {1: 4.0, 2: 2.5}
    assert animate.parse_target_aus('au01=0', names) == {0: 0.0}
    for text, msg in [('AU12:4', 'form AU12=4'), ('AU99=1', 'not one of'), ('AU12=x', 'not a number'),
                      ('AU12=6', 'outside'), ('', 'no AU given')]:
        with pytest.raises(ValueError, match=msg):
            animate.parse_target_aus(text, names)


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main.main(['--mode', 'test', '--outputs_dir', str(tmp_path)]) == 2
    assert 'no checkpoint' in capsys.readouterr().err


def test_weight_average_is_saved_and_used_by_test_mode(synth_dir, tmp_path):
    args = ['--num_iters', '8', '--num_iters_decay', '0', '--sample_step', '100', '--model_save_step', '4',
            '--g_ema_beta', '0.9']
    full = run(synth_dir, tmp_path / 'ema', *args)
    ck = checkpoint.load(checkpoint.path_for(str(full / 'models'), 8))
    assert set(ck['G_ema']) == set(ck['G'])
    assert any(not torch.equal(ck['G_ema'][k], ck['G'][k]) for k in ck['G'])   # an average, not a copy
    G, _ = model.Trained.newest(str(full / 'models')).networks(torch.device('cpu'))
    assert all(torch.equal(v, ck['G_ema'][k]) for k, v in G.state_dict().items())
    # resume restores the average too: a run that has only iteration 4's checkpoint ends at iteration 8
    # with the uninterrupted run's average, bit for bit
    part = tmp_path / 'part' / 'models'
    part.mkdir(parents=True)
    os.link(checkpoint.path_for(str(full / 'models'), 4), checkpoint.path_for(str(part), 4))
    run(synth_dir, part.parent, *args, '--resume_iters', 'latest')
    resumed = checkpoint.load(checkpoint.path_for(str(part), 8))
    assert all(torch.equal(v, resumed['G_ema'][k]) for k, v in ck['G_ema'].items())
    at4 = checkpoint.load(checkpoint.path_for(str(part), 4))['G_ema']
    assert any(not torch.equal(v, at4[k]) for k, v in ck['G_ema'].items())   # the average moved after iteration 4


def test_weight_average_can_be_switched_on_when_resuming(synth_dir, tmp_path):
    out = run(synth_dir, tmp_path / 'late_ema', '--num_iters', '2', '--num_iters_decay', '0', '--sample_step', '2',
              '--model_save_step', '2')
    assert 'G_ema' not in checkpoint.load(checkpoint.list_checkpoints(str(out / 'models'))[-1][1])
    run(synth_dir, out, '--num_iters', '4', '--num_iters_decay', '0', '--sample_step', '4', '--model_save_step', '4',
        '--g_ema_beta', '0.9', '--resume_iters', 'latest')
    ck = checkpoint.load(checkpoint.list_checkpoints(str(out / 'models'))[-1][1])
    assert ck['iteration'] == 4 and set(ck['G_ema']) == set(ck['G'])


def test_relative_condition_gets_the_source_aus_in_training_and_test_mode(synth_dir, tmp_path, monkeypatch):
    """--g_condition relative: in training the forward pass gets the batch's labels as its source and
    the cycle pass the targets; in test mode the source is the critic's reading of the face."""
    calls = []
    forward = model.Generator.forward

    def spy(G, x, c, c_src=None):
        calls.append((c.detach().clone(), None if c_src is None else c_src.detach().clone()))
        return forward(G, x, c, c_src)
    monkeypatch.setattr(model.Generator, 'forward', spy)
    out = run(synth_dir, tmp_path / 'rel', '--num_iters', '1', '--n_critic', '1', '--model_save_step', '1',
              '--sample_step', '100', '--compile', 'false', '--g_condition', 'relative')
    (c_trg, c_org), (c_back, c_src_back) = calls[:2]
    labels = torch.from_numpy(np.loadtxt(os.path.join(synth_dir, 'aus.txt'), usecols=range(1, 18))) / 5
    assert all((labels.float() - row).abs().amax(1).min() < 1e-6 for row in c_org)   # rows of the label table
    assert not torch.equal(c_org, c_trg)
    assert torch.equal(c_back, c_org) and torch.equal(c_src_back, c_trg)              # the cycle back
    calls.clear()
    res = tmp_path / 'res'
    assert main.main(['--mode', 'test', '--outputs_dir', str(out), '--test_num_faces', '2',
                      '--test_results_dir', str(res), '--target_aus', 'AU12=5']) == 0
    trained = model.Trained.newest(str(out / 'models'))
    (_, D), ckpt_cfg, names = trained.networks(torch.device('cpu')), trained.config, trained.label_names
    faces = animate.faces_to_edit(main.build_parser().parse_args(['--test_num_faces', '2']), ckpt_cfg, 32)
    x = torch.from_numpy(np.stack([f for _, f in faces])).permute(0, 3, 1, 2).float() / 127.5 - 1
    read = model.critic_reading(D, x, 'cpu')
    assert len(calls) == 2 and all(c_src is not None for _, c_src in calls)
    for i, (c, c_src) in enumerate(calls):     # one edit per face
        assert torch.allclose(c_src[0], read[i], atol=1e-4)
        assert c[0, names.index('AU12')] == 1.0


@pytest.mark.parametrize('option, value, refused_in', [('g_color_head', 'residual', ('test', 'train')),
                                                       ('d_label_trunk', 'separate', ('test', 'train')),
                                                       ('au_noise', 0.05, ('train',)),
                                                       ('lambda_cls_d', 2.0, ('train',))])
def test_a_checkpoint_of_a_removed_option_is_refused_naming_it_and_the_last_commit(synth_dir, tmp_path, capsys,
                                                                                  option, value, refused_in):
    """A run trained with an option this code no longer has: an architecture option is refused everywhere
    (this code would build another network), a loss option when training would resume from it."""
    out = run(synth_dir, tmp_path / 'old', '--num_iters', '2', '--model_save_step', '2', '--sample_step', '100')
    path = checkpoint.path_for(str(out / 'models'), 2)
    ck = checkpoint.load(path)
    ck['config'][option] = value
    checkpoint.save({k: v for k, v in ck.items() if k != '_sha256'}, path)
    capsys.readouterr()
    for mode in ('test', 'train'):
        extra = ['--resume_iters', 'latest', '--num_iters', '4'] + TINY if mode == 'train' else \
            ['--test_num_faces', '1', '--test_results_dir', str(tmp_path / 'results')]
        rc = main.main(['--mode', mode, '--dataset', 'synthetic', '--synthetic_dir', synth_dir,
                        '--outputs_dir', str(out)] + extra)
        err = capsys.readouterr().err
        if mode in refused_in:
            assert rc == 2 and f'--{option} {value}' in err and model.LAST_COMMIT_WITH_REMOVED_OPTIONS in err, err
        else:
            assert rc == 0, err
