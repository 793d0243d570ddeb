"""GANmut spaces, cycle codes, regularisers and losses, on tiny tensors."""
import math

import numpy as np
import pytest
import torch

import losses
import synthetic_faces
from ganmut import losses as ganmut_losses
from ganmut import space as ganmut
from ganmut.space import GaussianSpace, LinearSpace

SIZES = [4, 7, 9]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- names

def test_emotion_names_are_the_data_order():
    assert ganmut.EMOTION_NAMES is synthetic_faces.EMOTIONS
    assert ganmut.emotion_names(7) == ['neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger']
    names = ganmut.emotion_names(10)
    assert len(names) == 10 and names[7] == 'contempt' and names[8:] == ['emotion8', 'emotion9']
    space = LinearSpace(9)
    assert space.emotion_index('Happy') == 1 and space.emotion_index(8) == 8
    with pytest.raises(ValueError):
        space.emotion_index('joy')
    with pytest.raises(ValueError):
        space.emotion_index(9)


# --------------------------------------------------------------------------- linear space

@pytest.mark.parametrize('num', SIZES)
@pytest.mark.parametrize('dim', [2, 3])
@pytest.mark.parametrize('neutral', [0, 2])
def test_linear_axes_unit_and_neutral_at_origin(num, dim, neutral):
    torch.manual_seed(0)
    space = LinearSpace(num, dim, neutral_index=neutral)
    assert space.raw_axes.shape == (num - 1, dim)
    assert space.raw_axes.abs().max() < 0.1                      # initialised near zero
    axes = space.axes()
    assert axes.shape == (num, dim)
    assert torch.equal(axes[neutral], torch.zeros(dim))
    others = [i for i in range(num) if i != neutral]
    assert torch.allclose(axes[others].norm(dim=1), torch.ones(num - 1), atol=1e-6)
    # the normalisation does not depend on the raw scale
    with torch.no_grad():
        space.raw_axes.mul_(100.0)
    assert torch.allclose(space.axes(), axes, atol=1e-6)


def test_linear_axes_seeded_by_global_rng():
    torch.manual_seed(3)
    a = LinearSpace(5).axes()
    torch.manual_seed(3)
    b = LinearSpace(5).axes()
    torch.manual_seed(4)
    c = LinearSpace(5).axes()
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize('num', SIZES)
@pytest.mark.parametrize('dim', [2, 3])
def test_linear_sample_strengths_and_random_rows(num, dim):
    torch.manual_seed(0)
    space = LinearSpace(num, dim)
    emotions = torch.arange(400) % num
    t = space.sample(emotions, _gen(1), n_random=5, noise_std=0.0)
    z, s, rnd = t['code'], t['strength'], t['random']
    assert z.shape == (400, dim) and s.shape == (400,) and rnd.dtype == torch.bool
    assert rnd[:5].all() and not rnd[5:].any()
    neutral = emotions == 0
    assert (s[neutral] >= 0).all() and (s[neutral] <= 0.2).all()
    assert (s[~neutral] >= 0.2).all() and (s[~neutral] <= 1.0).all()
    assert s[~neutral].max() > 0.9 and s[~neutral].min() < 0.3            # the whole range is used
    # noise-free codes: s * axis, neutral exactly at the origin; random rows: norm s
    axes = space.axes()
    assert torch.allclose(z[5:], s[5:, None] * axes[emotions[5:]], atol=1e-6)
    assert torch.equal(z[5:][neutral[5:]], torch.zeros(int(neutral[5:].sum()), dim))
    assert torch.allclose(z[:5].norm(dim=1), s[:5], atol=1e-6)
    # the random rows are not on the axes of their emotions
    cos = (z[:5] * axes[emotions[:5]]).sum(1) / s[:5].clamp(min=1e-6)
    assert (cos < 0.999).all()
    assert torch.equal(t['emotion'], emotions)


def test_linear_sample_noise_and_determinism():
    torch.manual_seed(0)
    space = LinearSpace(4)
    emotions = torch.full((4000,), 2)
    t = space.sample(emotions, _gen(2), n_random=0)
    resid = t['code'] - t['strength'][:, None] * space.axes()[emotions]
    assert resid.std().item() == pytest.approx(0.075, rel=0.05)
    assert abs(resid.mean().item()) < 0.01
    t2 = space.sample(emotions, _gen(2), n_random=0)
    assert torch.equal(t['code'], t2['code'])


@pytest.mark.parametrize('batch,n_random', [(1, 5), (3, 5), (3, 0), (8, 3)])
def test_linear_sample_random_count_clamped(batch, n_random):
    space = LinearSpace(5)
    t = space.sample(torch.ones(batch, dtype=torch.long), _gen(), n_random=n_random)
    assert t['random'].sum().item() == min(batch, n_random)
    assert t['code'].shape == (batch, 2)


def test_linear_editing_codes_and_describe():
    space = LinearSpace(4)
    with torch.no_grad():
        space.raw_axes.copy_(torch.tensor([[0.0, 0.3], [-0.02, 0.0], [0.01, -0.01]]))   # 90, 180, 315 deg
    assert torch.allclose(space.code_for('happy', 0.5), torch.tensor([0.0, 0.5]), atol=1e-6)
    assert torch.allclose(space.code_for(2, 1.0), torch.tensor([-1.0, 0.0]), atol=1e-6)
    assert torch.equal(space.code_for('neutral', 0.7), torch.zeros(2))
    assert not space.code_for(1, 1.0).requires_grad
    assert torch.allclose(space.polar(90, 0.5), torch.tensor([0.0, 0.5]), atol=1e-6)
    assert torch.allclose(space.polar(315, 2.0), torch.tensor([math.sqrt(2), -math.sqrt(2)]), atol=1e-6)
    lines = space.describe()
    assert len(lines) == 4 and 'neutral' in lines[0] and 'origin' in lines[0]
    assert 'happy' in lines[1] and '--theta 90.0 --rho 1.0' in lines[1]
    assert '--theta 180.0' in lines[2] and '--theta 315.0' in lines[3]
    # what describe prints maps back to the axis through polar()
    for i, line in enumerate(lines[1:], 1):
        theta = float(line.split('--theta ')[1].split()[0])
        assert torch.allclose(space.polar(theta, 1.0), space.axes()[i].detach(), atol=1e-3)
    assert space.describe(['n', 'a', 'b', 'c'])[1].strip().startswith('a:')
    with pytest.raises(ValueError):
        LinearSpace(4, dim=3).polar(10, 1)
    assert len(LinearSpace(9, dim=3).describe()) == 9


def test_linear_state_dict_round_trip():
    a = LinearSpace(6)
    assert list(a.state_dict()) == ['raw_axes']
    b = LinearSpace(6)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.axes(), b.axes())


# --------------------------------------------------------------------------- gaussian space

def _perturb(space, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in space.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize('num', SIZES)
@pytest.mark.parametrize('dim', [2, 3])
def test_gaussian_covariances_spd(num, dim):
    torch.manual_seed(0)
    space = GaussianSpace(num, dim)
    for seed in range(3):
        cov = space.covariances()
        assert cov.shape == (num, dim, dim)
        assert torch.allclose(cov, cov.transpose(1, 2), atol=1e-6)
        assert (torch.linalg.eigvalsh(cov) > 0).all()
        eye = torch.eye(dim).expand(num, dim, dim)
        assert torch.allclose(space.precisions() @ cov, eye, atol=1e-3)
        means = space.means()
        assert means.shape == (num, dim) and (means.abs() < 1).all()
        _perturb(space, seed)
    with torch.no_grad():   # singular raw parameters are still SPD thanks to eps I
        for name, p in space.named_parameters():
            if name != 'raw_means':
                p.zero_()
    assert (torch.linalg.eigvalsh(space.covariances()) > 0).all()


def test_gaussian_init_separates_means():
    space = GaussianSpace(7)
    means = space.means().detach()
    assert torch.equal(means[0], torch.zeros(2))
    assert torch.allclose(means[1:].norm(dim=1), torch.full((6,), 0.5), atol=1e-6)
    d = torch.cdist(means, means) + torch.eye(7)
    assert d.min() > 0.4


def test_mahalanobis_small_example_by_hand():
    # one emotion at the origin, variances (4, 1) rotated by 90 deg -> C = diag(1, 4)
    space = GaussianSpace(2, eps=0.0)
    with torch.no_grad():
        space.raw_means.copy_(torch.tensor([[0.0, 0.0], [math.atanh(0.5), 0.0]]))
        space.theta.copy_(torch.tensor([math.pi / 2, 0.0]))
        space.raw_scales.copy_(torch.tensor([[4.0, -1.0], [1.0, 1.0]]))
    assert torch.allclose(space.covariances()[0], torch.tensor([[1.0, 0.0], [0.0, 4.0]]), atol=1e-6)
    z = torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    d = space.mahalanobis_sq(z)
    # z0: 1/1 + 4/4 = 2 to emotion 0; (0.5^2 + 2^2) / 1 = 4.25 to emotion 1
    # z1: 0.25 to emotion 0; 0 to emotion 1
    assert torch.allclose(d, torch.tensor([[2.0, 4.25], [0.25, 0.0]]), atol=1e-5)
    p = space.target_distribution(z)
    e = math.exp
    assert p[0, 0].item() == pytest.approx(e(-2) / (e(-2) + e(-4.25)), rel=1e-5)
    assert p[1, 1].item() == pytest.approx(1 / (1 + e(-0.25)), rel=1e-5)
    assert torch.allclose(space.target_log_distribution(z).exp(), p, atol=1e-6)


@pytest.mark.parametrize('dim', [2, 3])
def test_mahalanobis_against_numpy(dim):
    torch.manual_seed(1)
    space = GaussianSpace(4, dim)
    _perturb(space, 7)
    m = space.raw_means.detach().numpy().astype(np.float64)
    if dim == 2:
        th, a = space.theta.detach().numpy(), space.raw_scales.detach().numpy()
        covs = []
        for k in range(4):
            r = np.array([[np.cos(th[k]), -np.sin(th[k])], [np.sin(th[k]), np.cos(th[k])]])
            covs.append(r @ np.diag(np.abs(a[k])) @ r.T + space.eps * np.eye(2))
    else:
        low = np.tril(space.raw_chol.detach().numpy().astype(np.float64))
        covs = [low[k] @ low[k].T + space.eps * np.eye(3) for k in range(4)]
    z = np.random.default_rng(0).uniform(-1, 1, (5, dim))
    mu = np.tanh(m)
    d = np.array([[(z[b] - mu[k]) @ np.linalg.inv(covs[k]) @ (z[b] - mu[k]) for k in range(4)] for b in range(5)])
    p = np.exp(-d - (-d).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    zt = torch.tensor(z, dtype=torch.float32)
    assert np.allclose(space.covariances().detach().numpy(), np.stack(covs), rtol=1e-4, atol=1e-6)
    assert np.allclose(space.mahalanobis_sq(zt).detach().numpy(), d, rtol=1e-3, atol=1e-3)
    assert np.allclose(space.target_distribution(zt).detach().numpy(), p, atol=1e-4)


@pytest.mark.parametrize('num', [4, 9])
@pytest.mark.parametrize('dim', [2, 3])
def test_gaussian_sample(num, dim):
    space = GaussianSpace(num, dim)
    t = space.sample(16, _gen())
    z = t['code']
    assert z.shape == (16, dim)
    assert torch.equal(z[:num], space.means()) and z.requires_grad
    assert (z[num:].abs() <= 1).all() and z[num:].std() > 0.3
    assert torch.equal(t['emotion'], torch.cat([torch.arange(num), torch.full((16 - num,), -1)]))
    assert torch.equal(t['is_mean'], t['emotion'] >= 0)
    small = space.sample(3, _gen())                           # fewer codes than emotions: a random subset
    assert small['is_mean'].all() and len(set(small['emotion'].tolist())) == 3
    assert torch.equal(small['code'], space.means()[small['emotion']])
    assert space.sample(1, _gen())['code'].shape == (1, dim)


def test_gaussian_editing_codes_and_describe():
    space = GaussianSpace(5)
    mu = space.means().detach()
    assert torch.allclose(space.code_for('happy', 1.0), mu[1])
    assert torch.allclose(space.code_for('happy', 0.0), mu[0])
    assert torch.allclose(space.code_for(3, 0.5), (mu[0] + mu[3]) / 2)
    lines = space.describe()
    assert len(lines) == 5
    assert f'x={mu[1, 0].item():+.3f}' in lines[1] and f'y={mu[1, 1].item():+.3f}' in lines[1]
    assert 'std along principal axes 0.316/0.316' in lines[1]     # sqrt(0.1 + 1e-4)
    assert 'z=' in GaussianSpace(4, 3).describe()[2]
    with pytest.raises(ValueError):
        ganmut.make_space('polar', 7)
    assert isinstance(ganmut.make_space('gaussian', 9, 3), GaussianSpace)


# --------------------------------------------------------------------------- cycle codes

def test_cycle_code_approximate_by_hand():
    space = LinearSpace(3)
    with torch.no_grad():
        space.raw_axes.copy_(torch.tensor([[0.0, 0.1], [0.2, 0.0]]))
    e_org = torch.tensor([1, 0, 2])
    logits = torch.tensor([[0.0, math.log(3.0), 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    z = ganmut_losses.cycle_code_approximate(space, e_org, logits)
    # confidences: 3/5 for happy, 1/3 for emotion 2; neutral -> origin
    assert torch.allclose(z, torch.tensor([[0.0, 0.6], [0.0, 0.0], [1 / 3, 0.0]]), atol=1e-6)
    assert torch.equal(z[1], torch.zeros(2))
    z.sum().backward()
    assert logits.grad is None                                 # the confidence is a target: detached
    assert space.raw_axes.grad.abs().sum() > 0

    code_hat = torch.randn(4, 2, requires_grad=True)
    zo = ganmut_losses.cycle_code_original(code_hat)
    assert torch.equal(zo, code_hat) and not zo.requires_grad


# --------------------------------------------------------------------------- regularisers

def test_r1_known_linear_critic():
    # f(x) = sum(w * x) per sample: gradient w everywhere, ||w||^2 = 9
    w = torch.zeros(1, 2, 2, 2)
    w[0, 0, 0, 0], w[0, 1, 1, 1] = 3 * 0.6, 3 * 0.8
    w.requires_grad_(True)
    x = torch.rand(4, 2, 2, 2, requires_grad=True)
    out = (x * w).flatten(1).sum(1).view(4, 1, 1, 1)
    r1 = losses.r1_penalty(out, x)
    assert r1.item() == pytest.approx(9.0, rel=1e-5)
    r1.backward()                                              # double backward: d r1 / d w = 2 w
    assert torch.allclose(w.grad, 2 * w.detach(), atol=1e-5)

    # the critic pass both models share: R1 at the real images, WGAN-GP at real-fake interpolates
    import contextlib
    from types import SimpleNamespace

    from solver import Solver
    critic = SimpleNamespace(D=lambda img: ((img * w).flatten(1).sum(1).view(-1, 1, 1, 1), img.mean((2, 3)), None),
                             autocast=contextlib.nullcontext)
    real, fake = torch.rand(4, 2, 2, 2), torch.rand(4, 2, 2, 2)
    p = Solver.critic_pass(critic, real, fake, _gen(), r1=True, explicit=False)
    assert p.reg.item() == pytest.approx(9.0, rel=1e-5) and p.interpolates is None and p.extra == []
    assert torch.equal(p.reg_at, real) and torch.allclose(p.fake[1], fake.mean((2, 3)))
    p = Solver.critic_pass(critic, real, fake, _gen(), r1=False, explicit=False, extra=lambda: [fake * 2])
    assert p.reg.item() == pytest.approx(4.0, rel=1e-5)
    alpha = ((p.reg_at - fake) / (real - fake)).flatten(1)           # interpolates: one weight per image
    assert torch.allclose(alpha, alpha[:, :1].expand_as(alpha), atol=1e-4) and (alpha >= 0).all() and (alpha <= 1).all()
    assert torch.allclose(p.interpolates[0], critic.D(p.reg_at)[0]) and torch.allclose(p.extra[0][1], fake.mean((2, 3)) * 2)


def test_r1_quadratic_critic_per_sample():
    # f(x) = sum(x^2): gradient 2x, squared norm 4 * sum(x^2), averaged over the batch
    x = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 1.0]]]], requires_grad=True)
    out = (x ** 2).flatten(1).sum(1)
    assert losses.r1_penalty(out, x).item() == pytest.approx((4 * 5 + 4 * 1) / 2)


# --------------------------------------------------------------------------- critic losses

def _critic_inputs():
    out_real = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    out_fake = torch.tensor([0.5, -1.5]).view(2, 1, 1, 1)
    logits_real = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    e_org = torch.tensor([0, 0])
    code_hat_fake = torch.tensor([[0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    z = torch.tensor([[1.0, 1.0], [1.0, 0.0]], requires_grad=True)
    return out_real, out_fake, logits_real, e_org, code_hat_fake, z


@pytest.mark.parametrize('fn,key,lam', [(ganmut_losses.linear_critic_loss, 'D/info', 'lambda_d_info'),
                                        (ganmut_losses.gaussian_critic_loss, 'D/expr', 'lambda_expr')])
def test_critic_losses_by_hand(fn, key, lam):
    args = _critic_inputs()
    loss, rec = fn(*args, reg=torch.tensor(0.5), lambda_cls=2.0, lambda_reg=10.0, **{lam: 3.0})
    ce = (math.log(3.0) + math.log(4.0 / 2.0)) / 2          # softmax probs 1/3 and 2/4 of class 0
    mse = (1 + 0 + 0 + 1) / 4
    expected = -2.0 + (-0.5) + 2.0 * ce + 10.0 * 0.5 + 3.0 * mse
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert rec['D/real'] == pytest.approx(-2.0) and rec['D/fake'] == pytest.approx(-0.5)
    assert rec['D/cls'] == pytest.approx(ce, rel=1e-6) and rec[key] == pytest.approx(mse)
    assert rec['D/reg'] == pytest.approx(0.5) and rec['D/acc'] == pytest.approx(1.0)
    assert all(torch.is_tensor(v) and v.shape == () and not v.requires_grad for v in rec.values())
    loss.backward()
    assert args[5].grad is None                                 # the code is a target of the critic
    # d/d code_hat of 3 * mean((code_hat - z)^2) = 3 * 2 (code_hat - z) / 4
    assert torch.allclose(args[4].grad, 1.5 * torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))


# --------------------------------------------------------------------------- linear generator loss

def test_linear_generator_loss_by_hand():
    # rows: 0 random (emotion 2), 1 neutral target, 2 emotion 2 target
    target = {'emotion': torch.tensor([2, 0, 2]), 'code': torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.0, 1.0]]),
              'strength': torch.tensor([0.5, 0.1, 0.8]), 'random': torch.tensor([True, False, False])}
    out_fake = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1)
    logits = torch.tensor([[0.0, 0.0, 9.0], [math.log(2.0), 0.0, 0.0], [math.log(3.0), 0.0, math.log(2.0)]])
    code_hat = torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]])
    x, x_rec = torch.zeros(3, 3, 2, 2), torch.full((3, 3, 2, 2), 0.25)
    loss, rec = ganmut_losses.linear_generator_loss(out_fake, logits, code_hat, target, x, x_rec, lambda_cls=2.0,
                                             lambda_g_strength=3.0, lambda_g_info=4.0, lambda_rec=10.0)
    ce = (-math.log(2 / 4) - math.log(2 / 6)) / 2              # rows 1 and 2 only: p(target) = 1/2, 1/3
    strength = (3 / 6 - 0.8) ** 2                               # row 2 only: max softmax = 1/2 (class 0)
    info = 1.0 / 6
    expected = -2.0 + 2.0 * ce + 3.0 * strength + 4.0 * info + 10.0 * 0.25
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert rec['G/cls'] == pytest.approx(ce, rel=1e-6)
    assert rec['G/strength'] == pytest.approx(strength, rel=1e-5)
    assert rec['G/info'] == pytest.approx(info) and rec['G/rec'] == pytest.approx(0.25)
    assert rec['G/attn_sat'] == 0 and rec['G/fake'] == pytest.approx(-2.0)


def test_linear_generator_attention_terms():
    target = {'emotion': torch.tensor([1]), 'code': torch.zeros(1, 2), 'strength': torch.tensor([0.5]),
              'random': torch.tensor([False])}
    a = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    args = (torch.zeros(1, 1, 1, 1), torch.zeros(1, 3), torch.zeros(1, 2), target, torch.zeros(1, 3, 2, 2),
            torch.zeros(1, 3, 2, 2))
    base, _ = ganmut_losses.linear_generator_loss(*args, lambda_rec=0.0)
    loss, rec = ganmut_losses.linear_generator_loss(*args, lambda_rec=0.0, masks=[a, a], lambda_sat=0.1,
                                             lambda_smooth=0.01)
    assert rec['G/attn_sat'] == pytest.approx(1.0) and rec['G/attn_tv'] == pytest.approx(2.0)
    assert (loss - base).item() == pytest.approx(0.1 * 1.0 + 0.01 * 2.0, rel=1e-5)


class _ToyNets(torch.nn.Module):
    """Stands in for D(G(x, z)): scores, logits and code regression as functions of the code."""

    def __init__(self, num, dim):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.v = torch.nn.Parameter(torch.randn(dim, num, generator=g))
        self.w = torch.nn.Parameter(torch.randn(dim, dim, generator=g))

    def forward(self, z):
        return z.sum(1).view(-1, 1, 1, 1), z @ self.v, torch.tanh(z @ self.w)


@pytest.mark.parametrize('num', [4, 9])
@pytest.mark.parametrize('term', ['lambda_g_info', 'lambda_g_strength', 'lambda_cls'])
def test_linear_generator_gradient_reaches_axes(num, term):
    torch.manual_seed(0)
    space, nets = LinearSpace(num), _ToyNets(num, 2)
    target = space.sample(torch.arange(1, 9) % (num - 1) + 1, _gen(), n_random=2)
    out_fake, logits, code_hat = nets(target['code'])
    x = torch.zeros(8, 3, 4, 4)
    weights = dict(lambda_cls=0.0, lambda_g_strength=0.0, lambda_g_info=0.0, lambda_rec=0.0)
    weights[term] = 1.0
    loss, _ = ganmut_losses.linear_generator_loss(out_fake * 0, logits, code_hat, target, x, x, **weights)
    loss.backward()
    grad = space.raw_axes.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 1e-6


@pytest.mark.parametrize('case', ['all_random', 'all_neutral'])
def test_linear_generator_no_nan_on_empty_masks(case):
    torch.manual_seed(0)
    space, nets = LinearSpace(4), _ToyNets(4, 2)
    if case == 'all_random':
        target = space.sample(torch.tensor([1, 2, 3]), _gen(), n_random=5)
    else:
        target = space.sample(torch.zeros(3, dtype=torch.long), _gen(), n_random=0)
    out_fake, logits, code_hat = nets(target['code'])
    x = torch.zeros(3, 3, 4, 4)
    loss, rec = ganmut_losses.linear_generator_loss(out_fake, logits, code_hat, target, x, x + 0.1)
    assert torch.isfinite(loss) and rec['G/strength'] == 0
    if case == 'all_random':
        assert rec['G/cls'] == 0
    else:
        assert rec['G/cls'] > 0
    loss.backward()
    assert torch.isfinite(space.raw_axes.grad).all() and torch.isfinite(nets.v.grad).all()


# --------------------------------------------------------------------------- gaussian generator loss

def test_gaussian_generator_loss_by_hand():
    out_fake = torch.tensor([2.0, 4.0]).view(2, 1, 1, 1)
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])        # q = (1/4, 3/4), (3/4, 1/4)
    log_p = torch.log(torch.tensor([[0.5, 0.5], [0.75, 0.25]]))
    mean_emotion = torch.tensor([0, -1])
    x, x_rec = torch.zeros(2, 3, 2, 2), torch.full((2, 3, 2, 2), -0.5)
    loss, rec = ganmut_losses.gaussian_generator_loss(out_fake, logits, log_p, mean_emotion, x, x_rec, lambda_cls=2.0,
                                               lambda_prediction=0.5, lambda_rec=10.0)
    kl_pq = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl_qp = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    kl = (kl_pq + kl_qp + 0.0) / 2                                             # row 1: p == q
    pred = -math.log(0.25)                                                     # row 0 only
    expected = -3.0 + 2.0 * kl + 0.5 * pred + 10.0 * 0.5
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert rec['G/kl'] == pytest.approx(kl, rel=1e-5) and rec['G/pred'] == pytest.approx(pred, rel=1e-6)
    assert rec['G/rec'] == pytest.approx(0.5) and rec['G/fake'] == pytest.approx(-3.0)


def test_symmetric_kl_zero_iff_equal():
    lp = torch.log_softmax(torch.randn(5, 4, generator=_gen()), 1)
    assert ganmut_losses.symmetric_kl(lp, lp).item() == pytest.approx(0.0, abs=1e-7)
    assert ganmut_losses.symmetric_kl(lp, lp.flip(1)).item() > 0


@pytest.mark.parametrize('num', [4, 9])
@pytest.mark.parametrize('dim', [2, 3])
def test_gaussian_generator_gradients_reach_space(num, dim):
    torch.manual_seed(0)
    space, nets = GaussianSpace(num, dim), _ToyNets(num, dim)
    _perturb(space, 3)                  # anisotropic covariances, so the rotation has a gradient too
    x = torch.zeros(12, 3, 4, 4)

    # prediction term only: the means move through the mean-coded fakes
    t = space.sample(12, _gen())
    out_fake, logits, _ = nets(t['code'])
    loss, _ = ganmut_losses.gaussian_generator_loss(out_fake, logits, space.target_log_distribution(t['code']),
                                             t['emotion'], x, x, lambda_cls=0.0, lambda_prediction=1.0)
    loss.backward()
    assert space.raw_means.grad.abs().sum() > 1e-6
    cov_params = [p for n, p in space.named_parameters() if n != 'raw_means']
    assert all(p.grad is None or not p.grad.any() for p in cov_params)
    space.zero_grad()

    # symmetric KL only, on non-mean codes: the means and covariances move through the target distribution
    z = torch.rand(6, dim, generator=_gen(1)) * 2 - 1
    out_fake, logits, _ = nets(z)
    loss, rec = ganmut_losses.gaussian_generator_loss(out_fake, logits, space.target_log_distribution(z),
                                               torch.full((6,), -1), x[:6], x[:6], lambda_prediction=1.0)
    assert rec['G/pred'] == 0 and torch.isfinite(loss)
    loss.backward()
    assert space.raw_means.grad.abs().sum() > 1e-6
    for p in cov_params:
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 1e-6


def test_gaussian_far_codes_stay_finite():
    # codes far from every mean: p is nearly one-hot; the log-space KL must stay finite
    space = GaussianSpace(4)
    with torch.no_grad():
        space.raw_scales.fill_(1e-3)
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    logits = torch.zeros(2, 4, requires_grad=True)
    loss, _ = ganmut_losses.gaussian_generator_loss(torch.zeros(2, 1), logits, space.target_log_distribution(z),
                                             torch.full((2,), -1), torch.zeros(2, 3), torch.zeros(2, 3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert torch.isfinite(space.raw_means.grad).all()


def test_linear_info_target_keeps_graph_to_axes():
    # the code is a target of the info term too: with a code regression that ignores the
    # code, the axes still get the gradient of MSE(code_hat, z) with respect to z
    space = LinearSpace(3)
    target = space.sample(torch.tensor([1, 2]), _gen(), n_random=0, noise_std=0.0)
    x = torch.zeros(2, 3, 2, 2)
    loss, _ = ganmut_losses.linear_generator_loss(torch.zeros(2, 1), torch.zeros(2, 3), torch.zeros(2, 2), target, x, x,
                                           lambda_cls=0.0, lambda_g_strength=0.0, lambda_g_info=1.0)
    loss.backward()
    # d/dz mean((0 - z)^2) = 2 z / 4 = z / 2, and z = s * axis is parallel to the axis; the
    # gradient of the normalisation removes the radial part: the raw axes get none
    assert space.raw_axes.grad is not None
    assert torch.allclose(space.raw_axes.grad, torch.zeros(2, 2), atol=1e-4)   # 1/|raw| ~ 100 amplifies rounding
    space.zero_grad()
    target = space.sample(torch.tensor([1, 2]), _gen(), n_random=0, noise_std=0.0)
    code_hat = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss, _ = ganmut_losses.linear_generator_loss(torch.zeros(2, 1), torch.zeros(2, 3), code_hat, target, x, x,
                                           lambda_cls=0.0, lambda_g_strength=0.0, lambda_g_info=1.0)
    loss.backward()
    assert space.raw_axes.grad.abs().sum() > 1e-1
