import pytest
import torch
from tiny import tiny_solver

import losses
from solver import Solver, random_flip, sample_targets


def test_tv_loss_by_hand():
    a = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    # horizontal diffs: |1-0|, |0.5-0.5| -> mean 0.5; vertical: |0.5-0|, |0.5-1| -> mean 0.5
    assert losses.tv_loss(a).item() == pytest.approx(1.0)
    assert losses.tv_loss(torch.full((2, 1, 4, 4), 0.3)).item() == 0


def test_au_loss_is_mean_over_batch_and_aus():
    pred = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert losses.au_loss(pred, target).item() == pytest.approx(0.5)


def test_gradient_penalty_known_gradient():
    # critic f(x) = sum(w * x) per sample: the gradient is w everywhere, ||w|| = 3 -> (3 - 1)^2 = 4
    w = torch.zeros(1, 2, 2, 2)
    w[0, 0, 0, 0], w[0, 1, 1, 1] = 3 * 0.6, 3 * 0.8
    w.requires_grad_(True)
    x_hat = losses.interpolate(torch.rand(4, 2, 2, 2), torch.rand(4, 2, 2, 2))
    out = (x_hat * w).flatten(1).sum(1, keepdim=True)
    gp = losses.gradient_penalty(out, x_hat)
    assert gp.item() == pytest.approx(4.0, rel=1e-5)
    gp.backward()   # double backward reaches the critic's weights: d gp / d w = 2 (|w| - 1) w / |w|
    assert torch.allclose(w.grad, 2 * 2 * w.detach() / 3)
    w_unit = w.detach() / 3
    out = (x_hat * w_unit).flatten(1).sum(1)
    assert losses.gradient_penalty(out, x_hat).item() == pytest.approx(0.0, abs=1e-10)


def test_interpolate_lies_between():
    a, b = torch.zeros(5, 1, 2, 2), torch.ones(5, 1, 2, 2)
    x = losses.interpolate(a, b, torch.Generator().manual_seed(0))
    assert x.requires_grad and (x >= 0).all() and (x <= 1).all()
    assert torch.allclose(x, x[:, :, :1, :1].expand_as(x))  # one alpha per sample


def test_critic_loss_by_hand():
    out_real = torch.tensor([[1.0], [3.0]])
    out_fake = torch.tensor([[0.5], [0.5]])
    au_pred, au_real = torch.zeros(2, 3), torch.ones(2, 3)
    gp = torch.tensor(0.25)
    loss, rec = losses.critic_loss(out_real, out_fake, au_pred, au_real, gp, lambda_gp=10, lambda_cls=2)
    # -2 + 0.5 + 10*0.25 + 2*1
    assert loss.item() == pytest.approx(3.0)
    assert rec['D/real'] == pytest.approx(-2) and rec['D/gp'] == pytest.approx(0.25)


def test_generator_loss_by_hand():
    out_fake = torch.tensor([[2.0]])
    au_pred, au_trg = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    x = torch.zeros(1, 3, 2, 2)
    x_rec = torch.full((1, 3, 2, 2), 0.5)
    a_f = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])    # mean 0.5, TV: 1 + 0
    a_r = torch.ones(1, 1, 2, 2)                          # mean 1, TV 0
    loss, rec = losses.generator_loss(out_fake, au_pred, au_trg, x, x_rec, [a_f, a_r], lambda_cls=4,
                                      lambda_rec=10, lambda_sat=0.1, lambda_smooth=0.01)
    # -2 + 4*0.5 + 10*0.5 + 0.1*(0.5+1) + 0.01*(1+0)
    assert loss.item() == pytest.approx(-2 + 2 + 5 + 0.15 + 0.01)
    assert rec['G/attn_sat'] == pytest.approx(1.5)


def test_virtual_cycle_mixes_its_l1():
    z = torch.zeros(1, 3, 2, 2)
    loss, rec = losses.generator_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), z, z, [],
                                      1, 10, 0, 0, virtual=(torch.ones_like(z), z, []), virtual_weight=0.5)
    assert rec['G/rec_virtual'] == pytest.approx(1.0) and loss.item() == pytest.approx(5.0)


def test_targets_come_from_the_table_plus_noise():
    table = torch.tensor([[0.0] * 4, [1.0] * 4, [0.5] * 4])
    t = sample_targets(table, 500, torch.Generator().manual_seed(0), noise=0.1)
    assert t.shape == (500, 4) and t.min() >= 0 and t.max() <= 1
    dist = (t[:, None, :] - table[None]).abs().amax(-1).min(1).values
    assert dist.max() <= 0.1 + 1e-6 and dist.mean() > 0.01


def test_random_flip_flips_some():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    y = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    kept = (y == x).flatten(1).all(1)
    assert (flipped | kept).all() and 10 < flipped.sum() < 54


def test_linear_lr_decay():
    class C:
        num_iters, num_iters_decay, g_lr, d_lr = 100, 40, 1e-4, 2e-4
    s = Solver.__new__(Solver)
    s.cfg = C
    assert s.learning_rates(0) == (1e-4, 2e-4) and s.learning_rates(59) == (1e-4, 2e-4)
    assert s.learning_rates(80) == pytest.approx((0.5e-4, 1e-4))
    assert s.learning_rates(99)[0] == pytest.approx(1e-4 / 40)


def test_lr_decay_window_longer_than_the_run_covers_the_whole_run():
    # the original code's window (100,000) with a short run: full rates at the start, not 1% of them
    class C:
        num_iters, num_iters_decay, g_lr, d_lr = 1000, 100000, 1e-4, 2e-4
    s = Solver.__new__(Solver)
    s.cfg = C
    assert s.learning_rates(0) == pytest.approx((1e-4, 2e-4))
    assert s.learning_rates(500) == pytest.approx((0.5e-4, 1e-4))
    assert s.learning_rates(999)[1] == pytest.approx(2e-4 / 1000)


def test_color_keep_pulls_the_colour_head_to_the_input_where_the_mask_keeps_it():
    from losses import color_keep_loss
    x = torch.zeros(2, 3, 4, 4)
    color = torch.zeros(2, 3, 4, 4)
    color[..., :2] = 1.0                               # the colour head differs from x in the left half
    attn = torch.zeros(2, 1, 4, 4)
    assert color_keep_loss(color, x, attn).item() == 0.0              # A = 0: C is the output, free
    attn[..., :2] = 0.5
    assert color_keep_loss(color, x, attn).item() == pytest.approx(0.25)   # mean |C - x| * A: 0.5 on half
    attn[..., :2] = 0.0
    attn[..., 2:] = 1.0
    assert color_keep_loss(color, x, attn).item() == 0.0              # kept pixels already equal x
    attn = torch.full((2, 1, 4, 4), 0.7, requires_grad=True)
    color = color.clone().requires_grad_(True)
    color_keep_loss(color, x, attn).backward()
    assert attn.grad is None or attn.grad.abs().sum() == 0            # shapes C, never pushes A
    assert (color.grad[..., :2] > 0).all() and (color.grad[..., 2:] == 0).all()


def test_generator_au_weight_ramps_linearly_to_lambda_cls_end():
    from types import SimpleNamespace

    from solver import generator_au_weight
    cfg = SimpleNamespace(lambda_cls=160.0, lambda_cls_end=20.0, num_iters=101)
    assert generator_au_weight(cfg, 0) == 160.0 and generator_au_weight(cfg, 100) == 20.0
    assert generator_au_weight(cfg, 50) == pytest.approx(90.0)
    assert generator_au_weight(SimpleNamespace(lambda_cls=160.0, lambda_cls_end=-1.0, num_iters=10), 9) == 160.0


def test_generator_weight_average_follows_with_a_ramped_decay():
    from types import SimpleNamespace

    from solver import make_ema, update_ema
    G = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.InstanceNorm2d(1, affine=True))
    assert make_ema(G, SimpleNamespace(g_ema_beta=0.0)) is None
    with pytest.raises(ValueError, match='g_ema_beta'):
        make_ema(G, SimpleNamespace(g_ema_beta=1.0))
    ema = make_ema(G, SimpleNamespace(g_ema_beta=0.99))
    assert not any(p.requires_grad for p in ema.parameters())
    w0 = G[0].weight.detach().clone()
    with torch.no_grad():
        G[0].weight.add_(1.0)
    update_ema(ema, G, 0.99, step=0)              # ramp: b = min(0.99, 1/10) = 0.1
    assert torch.allclose(ema[0].weight, 0.1 * w0 + 0.9 * (w0 + 1))
    before = ema[0].weight.clone()
    update_ema(ema, G, 0.99, step=10 ** 6)        # late: b = 0.99
    assert torch.allclose(ema[0].weight, 0.99 * before + 0.01 * G[0].weight)


def test_non_saturating_losses_by_hand():
    import math
    sp = lambda v: math.log1p(math.exp(v))              # softplus
    out_real = torch.tensor([[0.0], [1.0]])
    out_fake = torch.tensor([[0.5], [-2.0]])
    au_pred, au_real = torch.zeros(2, 3), torch.zeros(2, 3)
    r1 = torch.tensor(0.3)
    loss, rec = losses.critic_loss(out_real, out_fake, au_pred, au_real, r1, lambda_gp=2, lambda_cls=1, adv='ns-r1')
    expected_real = (sp(0.0) + sp(-1.0)) / 2
    expected_fake = (sp(0.5) + sp(-2.0)) / 2
    assert rec['D/real'] == pytest.approx(expected_real) and rec['D/fake'] == pytest.approx(expected_fake)
    assert loss.item() == pytest.approx(expected_real + expected_fake + 2 * 0.3)
    x = torch.zeros(1, 3, 2, 2)
    g_loss, g_rec = losses.generator_loss(torch.tensor([[2.0]]), torch.zeros(1, 2), torch.zeros(1, 2), x, x, [],
                                          lambda_cls=1, lambda_rec=1, lambda_sat=0, lambda_smooth=0, adv='ns-r1')
    assert g_loss.item() == pytest.approx(sp(-2.0))    # the generator wants its fakes scored real


def first_step_record(tmp_path, *flags):
    """The loss record of the first training step of tiny_solver(tmp_path, *flags), as floats."""
    solver = tiny_solver(tmp_path, *flags)
    x, aus = next(solver.batches(0))
    return {k: float(v) for k, v in solver.train_step(0, x, aus).items()}


def test_r1_critic_step_regularises_the_real_images(tmp_path):
    records = {adv: first_step_record(tmp_path, '--adv_loss', adv) for adv in ('wgan-gp', 'ns-r1')}
    r1 = records['ns-r1']
    assert r1['D/real'] > 0 and r1['D/fake'] > 0 and r1['D/gp'] > 0           # softplus terms, R1 > 0
    assert r1['G/fake'] > 0                                                       # softplus(-D(x_f))
    assert records['wgan-gp']['D/gp'] != r1['D/gp']
    with pytest.raises(ValueError, match='--adv_loss'):
        tiny_solver(tmp_path, '--adv_loss', 'hinge')


def test_color_keep_term_joins_the_generator_loss_with_its_weight(tmp_path):
    off, on = (first_step_record(tmp_path, '--lambda_color_keep', w) for w in ('0', '3'))
    assert 'G/color_keep' not in off and on['G/color_keep'] > 0.01     # C starts far from the input
    assert on['D/loss'] == pytest.approx(off['D/loss'])                 # same seed: the same step up to G's loss
    assert on['G/loss'] == pytest.approx(off['G/loss'] + 3 * on['G/color_keep'], rel=1e-5)


def translation_between(x, y, max_shift):
    """(dy, dx) with y = x moved down dy and right dx pixels, zero-filled, or None."""
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            moved = torch.zeros_like(x)
            h, w = x.shape[-2:]
            moved[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            if torch.equal(moved, y):
                return dy, dx
    return None


def test_random_translation_moves_each_image_by_whole_pixels_with_zero_fill():
    from solver import random_translation
    x = (torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5).requires_grad_(True)
    y = random_translation(x, torch.Generator().manual_seed(1))       # up to 16 / 8 = 2 pixels
    shifts = [translation_between(x[i].detach(), y[i].detach(), 2) for i in range(32)]
    assert None not in shifts
    assert len(set(shifts)) > 8                     # a shift per image, not one per batch
    assert {s for pair in shifts for s in pair} == {-2, -1, 0, 1, 2}
    y.sum().backward()                              # differentiable: each kept pixel passes its gradient once
    kept = sum((16 - abs(dy)) * (16 - abs(dx)) for dy, dx in shifts) * 3
    assert x.grad.sum().item() == kept and set(x.grad.unique().tolist()) <= {0.0, 1.0}


def test_d_augment_shows_the_critic_shifted_real_and_fake_images(tmp_path):
    solver = tiny_solver(tmp_path, '--d_augment', 'translation')
    seen = []
    critic = solver.D.forward

    def spy(x):
        seen.append(x.detach().clone())
        return critic(x)
    solver.D.forward = spy
    x, aus = next(solver.batches(0))
    x_fake = x.flip(0) * 0.5
    solver.critic_step(x, aus, x_fake, torch.Generator().manual_seed(0))
    b = x.shape[0]
    real_seen, fake_seen = seen[0][:b], seen[0][b:2 * b]
    assert not torch.equal(real_seen, x)            # 32 px: shifts of up to 4 pixels, 81 choices per image
    assert all(translation_between(x[i], real_seen[i], 4) is not None for i in range(b))
    assert all(translation_between(x_fake[i], fake_seen[i], 4) is not None for i in range(b))
    assert torch.equal(seen[0][-b:], x)             # the AU head learns on the unshifted real images
    seen.clear()
    x_fake, attn, color = solver.G(x, aus.flip(0))
    record = solver.generator_step(x, aus, aus.flip(0), x_fake, attn, torch.Generator().manual_seed(0), color)
    assert all(translation_between(x_fake[i].detach(), seen[0][i], 4) is not None for i in range(b))
    assert not torch.equal(seen[0][:b], x_fake.detach())
    assert torch.equal(seen[0][b:], x_fake.detach())     # ... and scores the unshifted fakes
    with torch.no_grad():
        au_read = critic(x_fake.detach())[1]
    assert record['G/au'] == pytest.approx(losses.au_loss(au_read, aus.flip(0)).item(), rel=1e-5)
    with pytest.raises(ValueError, match='--d_augment'):
        tiny_solver(tmp_path, '--d_augment', 'cutout')
