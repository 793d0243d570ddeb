"""The solvers build their losses with the configured weights: with distinct, non-default weights the
logged total of each step (TensorBoard, one step per log) is the weighted sum of the logged parts, for
the critic and the generator of GANimation and of both GANmut spaces. A weight passed in the wrong
place (a swapped positional argument, a default used instead of the flag) breaks one of the sums.
Also checked here: the AU weight's ramp per iteration, --target_noise on the targets the generator
gets, GANmut's --n_r random codes, and the virtual cycle inside the solver."""
import pytest
import torch
from tiny import TINY_MODEL, tiny_solver

import data_loader as dl
import main
import model
import synthetic_faces as sf
from ganmut import space as ganmut


@pytest.fixture(scope='module')
def synth_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synthetic'))
    sf.write_dataset(root, 48, 32, seed=4, verbose=False)
    return root


def logged(logdir):
    """{step: {tag: value}} of the TensorBoard scalars of a run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir), size_guidance={'scalars': 0})
    acc.Reload()
    steps = {}
    for tag in acc.Tags()['scalars']:
        for event in acc.Scalars(tag):
            steps.setdefault(event.step, {})[tag] = event.value
    return steps


def train_logged(synth_dir, out, *flags, model_name='ganimation', num_iters=3):
    assert main.main(['--mode', 'train', '--model', model_name, '--dataset', 'synthetic', '--synthetic_dir',
                      synth_dir, '--synthetic_images', '48', '--outputs_dir', str(out)] + TINY_MODEL
                     + ['--n_critic', '1', '--log_step', '1', '--num_iters', str(num_iters), '--sample_step',
                        '100', '--model_save_step', '100', '--amp', 'off'] + list(flags)) == 0
    steps = logged(out / 'logs')
    assert sorted(steps) == list(range(1, num_iters + 1))
    return steps


def assert_weighted_sum(record, total, weights):
    """record[total] == sum of weight * record[part]; every part present, and each weighted one large
    enough that a wrong weight shows."""
    missing = set(weights) - set(record)
    assert not missing, f'{total}: parts not logged: {sorted(missing)}'
    for part, weight in weights.items():
        assert weight == 1 or abs(weight * record[part]) > 1e-3, f'{part} = {record[part]}: too small to tell its weight'
    parts = {k: w * record[k] for k, w in weights.items()}
    scale = sum(abs(v) for v in parts.values())
    assert record[total] == pytest.approx(sum(parts.values()), abs=1e-5 * scale), (total, record)


def au_weight_ramp(start, end, it, num_iters):
    return start + (end - start) * it / (num_iters - 1)


GANIMATION_CASES = {
    # the written-out gradient penalty (the CPU's default), the generator's AU weight ramped from 7 to 3 (the
    # critic's stays at 7), the colour term
    'wgan-gp': (['--lambda_gp', '2.5', '--lambda_cls', '7', '--lambda_cls_end', '3',
                 '--lambda_rec', '4.5', '--lambda_sat', '0.35', '--lambda_smooth', '1.7', '--lambda_color_keep', '0.9'],
                dict(gp=2.5, cls=(7, 3), cls_d=7, rec=4.5, sat=0.35, smooth=1.7, color_keep=0.9)),
    # the double-backward penalty and the virtual cycle
    'wgan-gp, double backward, virtual': (['--lambda_gp', '3.5', '--lambda_cls', '6', '--lambda_cls_end', '8',
                                           '--explicit_gp', 'false', '--lambda_rec', '5.5',
                                           '--lambda_sat', '0.25', '--lambda_smooth', '2.3', '--virtual',
                                           '--virtual_weight', '0.3'],
                                          dict(gp=3.5, cls=(6, 8), cls_d=6, rec=5.5, sat=0.25, smooth=2.3)),
    # R1 instead of the gradient penalty (--lambda_gp given too, and ignored; R1 is about 1e-5 at the start,
    # hence its large weight); a constant AU weight
    'ns-r1': (['--adv_loss', 'ns-r1', '--lambda_r1', '300', '--lambda_gp', '2.5', '--lambda_cls', '6.5',
               '--lambda_cls_end', '-1', '--lambda_rec', '3.5', '--lambda_sat', '0.45', '--lambda_smooth', '1.3'],
              dict(gp=300, cls=(6.5, 6.5), cls_d=6.5, rec=3.5, sat=0.45, smooth=1.3)),
}


@pytest.mark.parametrize('case', list(GANIMATION_CASES))
def test_ganimation_logged_losses_are_the_weighted_sums_of_their_parts(synth_dir, tmp_path, case):
    flags, w = GANIMATION_CASES[case]
    num_iters = 3
    steps = train_logged(synth_dir, tmp_path / 'run', *flags, num_iters=num_iters)
    for step, record in steps.items():
        critic = {'D/real': 1, 'D/fake': 1, 'D/gp': w['gp'], 'D/au': w['cls_d']}
        assert_weighted_sum(record, 'D/loss', critic)
        generator = {'G/fake': 1, 'G/au': au_weight_ramp(*w['cls'], step - 1, num_iters), 'G/rec': w['rec'],
                     'G/attn_sat': w['sat'], 'G/attn_tv': w['smooth']}
        if 'color_keep' in w:
            generator['G/color_keep'] = w['color_keep']
        assert_weighted_sum(record, 'G/loss', generator)
        assert ('G/rec_virtual' in record) == ('--virtual' in flags)


GANMUT_CASES = {
    'linear': (['--parametrization', 'linear', '--lambda_cls', '1.3', '--lambda_reg', '4.5', '--lambda_d_info',
                '0.45', '--lambda_g_strength', '0.7', '--lambda_g_info', '2.2', '--lambda_rec', '3.5',
                '--lambda_sat', '0.25', '--lambda_smooth', '1.9', '--n_r', '3',
                # gaussian-only weights, given to show that the linear losses do not take them
                '--lambda_expr', '5.5', '--lambda_prediction', '6.5'],
               {'D/real': 1, 'D/fake': 1, 'D/cls': 1.3, 'D/reg': 4.5, 'D/info': 0.45},
               {'G/fake': 1, 'G/cls': 1.3, 'G/strength': 0.7, 'G/info': 2.2, 'G/rec': 3.5, 'G/attn_sat': 0.25,
                'G/attn_tv': 1.9}),
    # R1 is about 1e-5 at the start: a large weight, so that it shows
    'gaussian, R1': (['--parametrization', 'gaussian', '--regularization_type', 'R1', '--lambda_cls', '1.6',
                      '--lambda_reg', '350', '--lambda_expr', '0.65', '--lambda_prediction', '2.7', '--lambda_rec',
                      '4.5', '--lambda_sat', '0.35', '--lambda_smooth', '2.1',
                      '--lambda_d_info', '5.5', '--lambda_g_info', '6.5', '--lambda_g_strength', '7.5'],
                     {'D/real': 1, 'D/fake': 1, 'D/cls': 1.6, 'D/reg': 350, 'D/expr': 0.65},
                     {'G/fake': 1, 'G/kl': 1.6, 'G/pred': 2.7, 'G/rec': 4.5, 'G/attn_sat': 0.35, 'G/attn_tv': 2.1}),
}


@pytest.mark.parametrize('case', list(GANMUT_CASES))
def test_ganmut_logged_losses_are_the_weighted_sums_of_their_parts(synth_dir, tmp_path, monkeypatch, case):
    flags, critic, generator = GANMUT_CASES[case]
    random_counts = []
    sample = ganmut.LinearSpace.sample

    def counting_sample(space, *args, **kw):
        drawn = sample(space, *args, **kw)
        random_counts.append(int(drawn['random'].sum()))
        return drawn
    monkeypatch.setattr(ganmut.LinearSpace, 'sample', counting_sample)
    steps = train_logged(synth_dir, tmp_path / 'run', *flags, model_name='ganmut')
    for record in steps.values():
        assert_weighted_sum(record, 'D/loss', critic)
        assert_weighted_sum(record, 'G/loss', generator)
    if 'linear' in flags:   # --n_r 3 of the batch of 4 are random directions (the default 5 would take all 4)
        assert random_counts == [3] * 3


def test_targets_carry_the_configured_noise(synth_dir, tmp_path, monkeypatch):
    """The generator's targets are rows of the label table moved by at most --target_noise, and by more
    than the default 0.1 when the flag asks for more."""
    conditions = []
    forward = model.Generator.forward

    def spy(G, x, c, c_src=None):
        if torch.is_grad_enabled():          # the training passes, not the sample grids
            conditions.append(c.detach().clone())
        return forward(G, x, c, c_src)
    monkeypatch.setattr(model.Generator, 'forward', spy)
    train_logged(synth_dir, tmp_path / 'run', '--target_noise', '0.35', '--batch_size', '8')
    labels = torch.from_numpy(dl.read_au_table(f'{synth_dir}/aus.txt')[2]).float() / 5
    targets = torch.cat(conditions[0::2])      # forward pass, then the cycle pass back to the labels
    assert targets.shape == (3 * 8, 17)
    # distance of each target to its nearest label row, in the largest AU difference
    nearest = (targets[:, None, :] - labels[None]).abs().amax(-1).min(1).values
    assert nearest.max() <= 0.35 + 1e-6
    assert nearest.max() > 0.2
    cycle = torch.cat(conditions[1::2])
    assert (cycle[:, None, :] - labels[None]).abs().amax(-1).min(1).values.max() < 1e-6   # the labels themselves


def test_virtual_cycle_runs_in_the_solver(tmp_path, monkeypatch):
    """--virtual: after the forward pass (x -> x_f at the target) and the cycle (x_f -> x at the source
    AUs), the solver sends x_f to a second drawn target and back; the record's virtual L1 is that of the
    return to x_f, mixed into G/rec by --virtual_weight."""
    calls = []
    forward = model.Generator.forward

    def spy(G, x, c, c_src=None):
        out = forward(G, x, c, c_src)
        calls.append((x.detach().clone(), c.detach().clone(), None if c_src is None else c_src.detach().clone(),
                      out[0].detach().clone()))
        return out
    solver = tiny_solver(tmp_path, '--virtual', '--virtual_weight', '0.3')
    x_real, aus_org = next(solver.batches(0))
    monkeypatch.setattr(model.Generator, 'forward', spy)
    record = solver.train_step(0, x_real, aus_org)
    assert len(calls) == 4
    (x0, trg, _, x_fake), (x1, c1, s1, x_rec), (x2, virt, s2, x_v), (x3, c3, s3, x_vrec) = calls
    assert torch.equal(x1, x_fake) and torch.equal(c1, aus_org) and torch.equal(s1, trg)     # the cycle
    assert torch.equal(x2, x_fake) and torch.equal(s2, trg) and not torch.equal(virt, trg)   # the virtual target
    assert torch.equal(x3, x_v) and torch.equal(c3, trg) and torch.equal(s3, virt)           # and back
    virtual = (x_vrec - x_fake).abs().mean()
    assert float(record['G/rec_virtual']) == pytest.approx(float(virtual), rel=1e-5)
    plain = (x_rec - x0).abs().mean()
    assert float(record['G/rec']) == pytest.approx(float(0.7 * plain + 0.3 * virtual), rel=1e-5)
