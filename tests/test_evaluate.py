"""Evaluation: image metrics against hand-computed values, the fixed pairs and their
true renderings, scores of a do-nothing and an oracle generator (GANimation's and GANmut's,
read by a real reader), the reader cache, and --mode eval / --eval_step end to end (tiny
models, 32 px)."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from tiny import TINY_MODEL, quick_reader

import data_loader as dl
import main
import model
import synthetic_faces as sf
from evaluation import au_scores, emotion_scores, metrics
from evaluation import reader as readers
from ganmut import solver as ganmut_solver
from ganmut import space as ganmut_space

# --------------------------------------------------------------------------- metrics

def test_ssim_of_constant_images_matches_formula():
    # constant images: variances and covariance are 0, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.3, -0.2
    x = torch.full((1, 3, 16, 16), a)
    y = torch.full((1, 3, 16, 16), b)
    c1 = (0.01 * 2) ** 2
    assert metrics.ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)


def test_ssim_identity_and_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2), atol=1e-6)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    s = metrics.ssim(x, noisy)
    assert (s < 0.9).all() and (s > 0).all()


def test_ssim_of_one_window_matches_weighted_statistics():
    w = metrics.gaussian_window()
    assert w.shape == (11, 11) and w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert w[5, 5] == w.max() and torch.allclose(w, w.T)
    r = np.arange(11) - 5.0
    g = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    wn = np.outer(g, g) / np.outer(g, g).sum()
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (11, 11)), rng.uniform(-1, 1, (11, 11))
    mx, my = (wn * x).sum(), (wn * y).sum()
    vx, vy = (wn * x * x).sum() - mx ** 2, (wn * y * y).sum() - my ** 2
    cxy = (wn * x * y).sum() - mx * my
    c1, c2 = 0.02 ** 2, 0.06 ** 2
    expect = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    got = metrics.ssim(torch.tensor(x).view(1, 1, 11, 11), torch.tensor(y).view(1, 1, 11, 11))
    assert got.shape == (1,) and got.item() == pytest.approx(expect, rel=1e-5)   # one valid window


def test_psnr_and_l1_values():
    x = torch.zeros(1, 3, 8, 8)
    y = torch.full((1, 3, 8, 8), 0.2)         # MSE 0.04 with range 2: 10 log10(4 / 0.04) = 20 dB
    assert metrics.psnr(x, y).item() == pytest.approx(20.0, abs=1e-4)
    assert metrics.l1(x, y).item() == pytest.approx(0.2)
    assert metrics.psnr(x, x).item() == pytest.approx(100.0, abs=1e-3)


# --------------------------------------------------------------------------- pairs and scores

@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synth_eval'))
    sf.write_dataset(root, 160, 32, seed=3, verbose=False)
    return root


def test_pairs_use_held_out_faces_and_true_renderings(synth):
    names = list(sf.AU_NAMES)
    pairs = au_scores.EvalPairs(f'{synth}/images', f'{synth}/aus.txt', names, 32, num_pairs=20, seed=1)
    meta = sf.read_meta(synth)
    assert pairs.split == 'test' and len(pairs) == 20
    assert all(meta[f][1] == 'test' for f in pairs.files)
    i = 4
    expect = sf.render(sf.sample_identity(meta[pairs.files[i]][0]), pairs.aus_trg[i].numpy() * 5, 32)
    assert np.array_equal(((pairs.truth[i].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy(), expect)
    # with the source's own AUs the truth is the stored image itself
    own = sf.render(sf.sample_identity(meta[pairs.files[i]][0]), pairs.aus_src[i].numpy() * 5, 32)
    assert np.array_equal(((pairs.x_src[i].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy(), own)
    # same seed, same pairs
    again = au_scores.EvalPairs(f'{synth}/images', f'{synth}/aus.txt', names, 32, num_pairs=20, seed=1)
    assert np.array_equal(again.src, pairs.src) and torch.equal(again.aus_trg, pairs.aus_trg)


def test_pairs_with_an_au_subset_keep_the_other_aus(synth):
    pairs = au_scores.EvalPairs(f'{synth}/images', f'{synth}/aus.txt', ['AU12', 'AU25'], 32, num_pairs=30, seed=0)
    others = [i for i in range(17) if i not in pairs.cols]
    assert pairs.cond_trg.shape == (30, 2)
    assert torch.equal(pairs.aus_trg[:, others], pairs.aus_src[:, others])
    assert not torch.equal(pairs.aus_trg[:, pairs.cols], pairs.aus_src[:, pairs.cols])


class CopyG(nn.Module):
    """The do-nothing generator: A = 1."""
    def forward(self, x, c, c_src=None):
        return x, torch.ones_like(x[:, :1]), x


class OracleG(nn.Module):
    """Returns the true renderings of `pairs` in order for the edits (every other call;
    the calls between are the cycle reconstructions, which get their input back)."""
    def __init__(self, pairs):
        super().__init__()
        self.pairs, self.calls, self.pos = pairs, 0, 0

    def forward(self, x, c, c_src=None):
        self.calls += 1
        if self.calls % 2 == 0:
            return x, torch.ones_like(x[:, :1]), x
        out = self.pairs.truth[self.pos:self.pos + x.shape[0]]
        self.pos += x.shape[0]
        return out, torch.zeros_like(x[:, :1]), out


def test_scores_of_copy_and_oracle_generators(synth):
    """The headline figures at values known by construction, read by a real (briefly fitted) reader:
    the do-nothing generator scores as the do-nothing baseline, the oracle scores the truth (edit error
    reduction 1, and an AU error equal to the reader's own error on the true renderings, au_mae_floor)."""
    pairs = au_scores.EvalPairs(f'{synth}/images', f'{synth}/aus.txt', list(sf.AU_NAMES), 32, num_pairs=16, seed=2)
    dev = torch.device('cpu')
    train = dl.au_dataset(f'{synth}/images', f'{synth}/aus.txt', 32, 'train')
    reader = readers.fit_reader(train, dev, iters=20, batch_size=16, log=None)   # inaccurate, but not constant
    assert readers.read(reader, pairs.x_src).std(0).mean() > 1e-3
    copy, _, _ = au_scores.score(CopyG(), pairs, reader, dev)
    assert copy['edit_error_reduction'] == pytest.approx(0.0, abs=1e-7)
    assert copy['model']['l1'] == pytest.approx(copy['baseline']['l1']) and copy['baseline']['l1'] > 0
    assert copy['attn_mean'] == 1.0 and copy['model']['rec_l1'] == 0.0
    assert copy['au_mae'] == copy['model']['au_mae'] == pytest.approx(copy['baseline']['au_mae'], abs=1e-6)
    assert all(v['model'] == pytest.approx(v['baseline'], abs=1e-6) for v in copy['per_au'].values())
    oracle, _, _ = au_scores.score(OracleG(pairs), pairs, reader, dev)
    assert oracle['edit_error_reduction'] == pytest.approx(1.0)
    assert oracle['model']['ssim'] == pytest.approx(1.0, abs=1e-6) and oracle['model']['psnr'] > 99
    assert oracle['baseline']['ssim'] < 1.0
    assert oracle['au_mae'] == pytest.approx(oracle['au_mae_floor'], abs=1e-6)
    assert all(v['model'] == pytest.approx(v['floor'], abs=1e-6) for v in oracle['per_au'].values())
    # neither the baseline nor the floor depends on the generator, and they differ: the checks tell the two apart
    assert oracle['baseline']['au_mae'] == pytest.approx(copy['baseline']['au_mae'], abs=1e-6)
    assert oracle['au_mae_floor'] == pytest.approx(copy['au_mae_floor'], abs=1e-6)
    assert max(abs(v['floor'] - v['baseline']) for v in copy['per_au'].values()) > 1e-3


class TruthInOrder(nn.Module):
    """A GANmut oracle: returns `truth` (N, E, 3, H, W), the true rendering of each face with each
    emotion, chunk by chunk in the order run_edits asks (every face x every emotion)."""
    def __init__(self, truth):
        super().__init__()
        self.truth, self.pos = truth.flatten(0, 1), 0

    def forward(self, x, c):
        out = self.truth[self.pos:self.pos + x.shape[0]]
        self.pos += x.shape[0]
        return out, torch.zeros_like(x[:, :1]), out


def test_emotion_scores_of_copy_and_oracle_generators(synth):
    """GANmut's emotion accuracy at values known by construction, read by a real (briefly fitted)
    emotion reader: a do-nothing generator scores as the do-nothing baseline, the reader's accuracy on
    the unedited faces against each intended emotion; the oracle as the reader on the true renderings."""
    names = ganmut_space.emotion_names(7)
    faces = emotion_scores.EmotionEvalFaces(f'{synth}/images', f'{synth}/training.csv', names, 32, num_faces=12)
    E, dev = len(names), torch.device('cpu')
    assert faces.truth.shape[:2] == (12, E) and 12 * E > 64        # run_edits calls G more than once
    train = ganmut_solver.emotion_set(f'{synth}/images', f'{synth}/training.csv', 32, E)
    reader = readers.fit_reader(train, dev, iters=20, batch_size=16, log=None)
    assert reader.kind == 'emotion'
    read_src = readers.read(reader, faces.x_src)
    assert read_src.std(0).mean() > 1e-3                # not a constant reader
    read_src = read_src.argmax(1)
    read_truth = readers.read(reader, faces.truth.flatten(0, 1)).argmax(1).view(12, E)
    space = ganmut_space.make_space('linear', E)

    copy, y = emotion_scores.score(CopyG(), space, faces, reader, dev)
    assert torch.equal(y, faces.x_src.unsqueeze(1).expand_as(y))
    # each unedited face against every intended emotion (on average 1/E: a face is read as one emotion)
    unedited = (read_src.unsqueeze(1) == torch.arange(E)).float()
    assert copy['emotion_accuracy'] == copy['baseline']['emotion_accuracy'] == pytest.approx(unedited.mean().item())
    truth_acc = (read_truth == torch.arange(E)).float()             # the reader on the true renderings
    assert copy['reader_accuracy_truth'] == pytest.approx(truth_acc.mean().item())   # whatever G does
    hist = torch.bincount(read_src, minlength=E).tolist()
    assert copy['confusion']['model'] == [hist] * E     # every row: what the sources are read as
    for e, n in enumerate(names):
        v = copy['per_emotion'][n]
        assert v['accuracy'] == v['baseline_accuracy'] == pytest.approx(unedited[:, e].mean().item())
        assert v['reader_accuracy_truth'] == pytest.approx(truth_acc[:, e].mean().item())

    oracle, y = emotion_scores.score(TruthInOrder(faces.truth), space, faces, reader, dev)
    assert torch.equal(y, faces.truth)
    assert oracle['emotion_accuracy'] == oracle['reader_accuracy_truth'] == pytest.approx(truth_acc.mean().item())
    assert oracle['confusion']['model'] == oracle['confusion']['truth'] == \
        [torch.bincount(read_truth[:, e], minlength=E).tolist() for e in range(E)]
    for e, n in enumerate(names):
        v = oracle['per_emotion'][n]
        assert v['accuracy'] == v['reader_accuracy_truth'] == pytest.approx(truth_acc[:, e].mean().item())
        assert v['baseline_accuracy'] == copy['per_emotion'][n]['baseline_accuracy']
    # the two generators score differently, so each check tells them apart
    assert oracle['confusion']['model'] != copy['confusion']['model']


def test_reader_is_cached_and_keyed_by_the_labels(synth, tmp_path, monkeypatch):
    train = dl.au_dataset(f'{synth}/images', f'{synth}/aus.txt', 32, 'train')
    path = readers.reader_path(train)
    reader = readers.load_or_fit_reader(train, torch.device('cpu'), log=None, iters=30, batch_size=16)
    assert os.path.exists(path)

    def no_second_fit(*args, **kw):
        raise AssertionError('the cached reader was fitted again')
    monkeypatch.setattr(readers, 'fit_reader', no_second_fit)
    again = readers.load_or_fit_reader(train, torch.device('cpu'), log=None, iters=30, batch_size=16)
    for a, b in zip(reader.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    train.labels = train.labels.clone()
    train.labels[0, 0] = 1 - train.labels[0, 0]
    assert readers.reader_path(train) != path


def test_reader_learns_the_aus(synth):
    # a short fit already reads the AUs much better than a constant guess
    train = dl.au_dataset(f'{synth}/images', f'{synth}/aus.txt', 32, 'train')
    reader = readers.fit_reader(train, torch.device('cpu'), iters=250, batch_size=32, log=None)
    pred = readers.read(reader, dl.to_tensor(np.stack([train.load_uint8(i) for i in range(len(train))])))
    err = (pred - train.labels).abs().mean().item()
    const = (train.labels - train.labels.mean(0)).abs().mean().item()
    assert err < 0.6 * const


# --------------------------------------------------------------------------- end to end

TINY = TINY_MODEL + ['--log_step', '2', '--synthetic_images', '48', '--eval_pairs', '24',
                     '--eval_step_pairs', '8']


def test_eval_mode_and_eval_step(tmp_path, monkeypatch):
    quick_reader(monkeypatch)
    synth = str(tmp_path / 'synth')
    out = tmp_path / 'run'
    common = ['--dataset', 'synthetic', '--synthetic_dir', synth, '--outputs_dir', str(out)] + TINY
    assert main.main(['--mode', 'train', '--num_iters', '4', '--eval_step', '2', '--model_save_step', '4',
                      '--sample_step', '100'] + common) == 0
    curve = [json.loads(line) for line in open(out / 'results' / 'eval_curve.jsonl')]
    assert [c['iteration'] for c in curve] == [2, 4]
    assert all(math.isfinite(c['edit_error_reduction']) and c['pairs'] == 8 for c in curve)
    assert main.main(['--mode', 'eval'] + common) == 0
    res = json.loads((out / 'results' / 'eval_00000004.json').read_text())
    for key in ('l1', 'psnr', 'ssim'):
        assert key in res['model'] and key in res['baseline']
    assert res['edit_error_reduction'] == pytest.approx(1 - res['model']['l1'] / res['baseline']['l1'])
    assert res['au_mae'] >= 0 and res['au_mae_floor'] >= 0 and len(res['per_au']) == 17
    assert res['pairs'] == 24 and res['iteration'] == 4
    assert os.path.exists(out / 'results' / 'eval_00000004_grid.png')


def test_relative_generator_is_also_scored_on_the_critics_reading(tmp_path, monkeypatch):
    """--g_condition relative: the headline figures give G the sources' labels; with the critic,
    `source_read_by_critic` scores G as test mode runs it, on the critic's reading of each source."""
    synth = tmp_path / 'synth'
    out = tmp_path / 'run'
    assert main.main(['--mode', 'train', '--dataset', 'synthetic', '--synthetic_dir', str(synth), '--outputs_dir',
                      str(out), '--num_iters', '2', '--model_save_step', '2', '--sample_step', '100',
                      '--g_condition', 'relative'] + TINY) == 0
    trained = model.Trained.newest(str(out / 'models'))
    (G, D), names = trained.networks(torch.device('cpu')), trained.label_names
    pairs = au_scores.EvalPairs(str(synth / 'images'), str(synth / 'aus.txt'), names, 32, 16)
    cpu = torch.device('cpu')
    res, y, _ = au_scores.score(G, pairs, None, cpu, None, D)
    assert res['model']['l1'] == pytest.approx(metrics.l1(au_scores.run_generator(G, pairs, cpu)[0], pairs.truth).mean().item())
    y_read = au_scores.run_generator(G, pairs, cpu, cond_src=au_scores.critic_reading(D, pairs.x_src, cpu))[0]
    read = res['source_read_by_critic']
    assert read['l1'] == pytest.approx(metrics.l1(y_read, pairs.truth).mean().item())
    assert read['l1'] != pytest.approx(res['model']['l1'])             # an untrained critic misreads the AUs
    assert read['edit_error_reduction'] == pytest.approx(1 - read['l1'] / res['baseline']['l1'])
    assert 'source_read_by_critic' not in au_scores.score(G, pairs, None, cpu)[0]
    monkeypatch.setattr(au_scores, 'critic_reading', lambda D, x, device: pairs.cond_src)   # a critic that reads the labels
    same = au_scores.score(G, pairs, None, cpu, None, D)[0]
    assert same['source_read_by_critic']['l1'] == pytest.approx(same['model']['l1'])
