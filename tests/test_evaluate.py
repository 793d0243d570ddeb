"""Evaluation: image metrics against hand-computed values, the fixed pairs and their
true renderings, scores of a do-nothing and an oracle generator, the reader cache,
and --mode eval / --eval_step end to end (tiny models, 32 px)."""
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
from evaluation import au_scores, metrics
from evaluation import reader as readers

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
    pairs = au_scores.EvalPairs(f'{synth}/images', f'{synth}/aus.txt', list(sf.AU_NAMES), 32, num_pairs=16, seed=2)
    dev = torch.device('cpu')
    res, _, _ = au_scores.score(CopyG(), pairs, None, dev)
    assert res['edit_error_reduction'] == pytest.approx(0.0, abs=1e-7)
    assert res['model']['l1'] == pytest.approx(res['baseline']['l1']) and res['baseline']['l1'] > 0
    assert res['attn_mean'] == 1.0 and res['model']['rec_l1'] == 0.0
    res, _, _ = au_scores.score(OracleG(pairs), pairs, None, dev)
    assert res['edit_error_reduction'] == pytest.approx(1.0)
    assert res['model']['ssim'] == pytest.approx(1.0, abs=1e-6) and res['model']['psnr'] > 99
    assert res['baseline']['ssim'] < 1.0


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
