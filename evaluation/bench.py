"""--mode bench: how fast training and test-mode inference run, measured.

    python main.py --mode bench --image_size 64 --g_conv_dim 32 --d_conv_dim 32 \\
        --g_repeat_num 3 --d_repeat_num 5 --batch_size 16 --bench_compare

Times `--bench_iters` training iterations (critic steps, and generator steps in
the `--n_critic` cadence of training; rounded up to whole cycles) after `--bench_warmup`
untimed ones (at least two cycles, so that every compiled graph has run twice and
compiling, reported on its own line, never falls in the timed window), on
real batches from the configured dataset (loading included), then test-mode
inference (G forward passes in batches of `--test_batch_size`, no grad).
`--bench_compare` times, in the same process, the plain path: fp32,
eager, contiguous (NCHW) tensors, a for-loop Adam and the simple data loader
(images decoded from disk every time by DataLoader workers); and a third loop,
what the original vipermu GANimation loop does (OriginalLoop): the code users would
otherwise run, so the ratio to it comes from the same run. The timed iterations are
split into three rounds (ROUNDS) in which the paths take turns, and each path's
figure is its median round: on a shared machine a slow spell then falls on every
path alike instead of on whichever ran during it. `--bench_switches` adds, to the same
rounds, the optimised path with each of its speed switches turned off alone: what each
one contributes, on this machine, in one run.

FLOP count (analytic, from the layer shapes): a convolution costs
2 * C_in * C_out * k_h * k_w per output pixel (a transposed one per *input*
pixel); norms, activations and the optimiser are left out (under 2% here). A
backward pass counts twice its forward (gradients of the activations and of
the weights). Per iteration, with F_G, F_D the forward FLOPs of one image:
  critic step:    G forward (b) + D forward and backward (3b: real, fake,
                  interpolated) + gradient penalty (b: the input gradient,
                  F_D, and its backward, 2 F_D)  = b (F_G + 12 F_D)
  generator step: reconstruction G forward (b), D forward (b), the backward
                  through D (input gradients only: F_D) and through both G
                  passes (4 F_G)                 = b (5 F_G + 2 F_D), once per n_critic iterations.
Without --virtual. This is the work of the standard computation (the plain path), and
both paths are scored against it: with --explicit_gp the interpolates need no
backward through D (sign pass F_D, transposed pass F_D and its backward 2 F_D: 10 F_D
instead of 12 per critic step), about 5% fewer FLOPs than counted in the 64 px
configuration, so its TFLOP/s are "model FLOPs" per second.
"""
import copy
import json
import os
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import data_loader as dl
import losses
from solver import Solver, TrainingPath, images_to_float, synchronize
from utils.records import run_folder
from utils.runtime import adam_kind, cpu_kind, explicit_gp_on, resolve_device, small_conv_matmul_on

# --------------------------------------------------------------------------- FLOPs

def forward_flops(model, *inputs):
    """FLOPs of one forward pass of `model` on `inputs` (a batch of one), of its convolutions and
    matrix products (torch.utils.flop_counter: 2 * C_in * C_out * k_h * k_w per output pixel of a
    convolution, per input pixel of a transposed one)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    return counter.get_total_flops()


def step_flops(G, D, image_size, c_dim, batch_size, n_critic):
    """Average FLOPs of one training iteration (see the module docstring)."""
    device = next(G.parameters()).device
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    f_g = forward_flops(G, x, torch.zeros(1, c_dim, device=device))
    f_d = forward_flops(D, x)
    critic = batch_size * (f_g + 12 * f_d)
    generator = batch_size * (5 * f_g + 2 * f_d)
    return critic + generator / n_critic, f_g, f_d


# --------------------------------------------------------------------------- timing

ROUNDS = 3   # the timed iterations in three rounds, the paths taking turns; each path's median round

def plain_config(cfg):
    """The unoptimised path: fp32, eager, NCHW, for-loop Adam, images decoded every time."""
    plain = copy.copy(cfg)
    plain.amp, plain.channels_last, plain.data_cache, plain.fused_adam = 'off', 'false', 'false', 'false'
    plain.compile, plain.small_conv_matmul, plain.explicit_gp = 'false', 'false', 'false'
    return plain


def peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB; the process's peak RSS


def cadence(warmup, iters, n_critic, rounds=1):
    """(warm-up, timed) iteration counts in whole n_critic cycles: the warm-up at least two cycles, so that
    every compiled graph (the generator with and without grad, their backward) has run twice before the
    clock starts, and the timed window, split into `rounds` equal rounds, holds exactly its share of
    generator steps."""
    cycles = -(-max(warmup, 2 * n_critic) // n_critic)
    per_round = -(-iters // (rounds * n_critic)) * n_critic
    return cycles * n_critic, per_round * rounds


class OriginalLoop:
    """A loop that does what the original vipermu GANimation training loop does, written here from its
    facts: fp32, NCHW, the training set held as one in-memory tensor, separate critic passes over the
    real, the fake and the interpolated images, the gradient penalty by double backward,
    torch.optim.Adam, every n_critic iterations a generator step with the cycle's second generator
    pass, and the generator's colour and attention heads as two convolutions. The networks are this
    code's (the same shapes; plain_config), so only the loop differs."""

    def __init__(self, cfg, train_set):
        self.cfg = cfg
        solver = Solver(plain_config(cfg), train_set)
        self.G, self.D, self.device = solver.G, solver.D, solver.device
        self.G.heads = self.separate_heads
        self.g_opt = torch.optim.Adam(self.G.parameters(), cfg.g_lr, betas=(cfg.beta1, cfg.beta2))
        self.d_opt = torch.optim.Adam(self.D.parameters(), cfg.d_lr, betas=(cfg.beta1, cfg.beta2))
        images = torch.stack([torch.from_numpy(train_set.load_uint8(i)) for i in range(len(train_set))])
        self.images = images_to_float(images, self.device, torch.contiguous_format)
        self.labels = train_set.labels.float().to(self.device)
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.it = 0

    def separate_heads(self, h):
        return self.G.color(h), self.G.attn(h), None

    def iteration(self, it):
        cfg, G, D, b, rng = self.cfg, self.G, self.D, self.cfg.batch_size, self.rng
        idx = torch.randint(len(self.images), (b,), generator=rng)
        x_real, aus_org = self.images[idx], self.labels[idx]
        aus_trg = self.labels[torch.randint(len(self.images), (b,), generator=rng)]
        x_fake = G(x_real, aus_trg)[0]
        src_real, cls_real = D(x_real)[:2]
        src_fake = D(x_fake.detach())[0]
        alpha = torch.rand(b, 1, 1, 1, generator=rng).to(self.device)
        x_hat = losses.interpolate(x_real, x_fake.detach(), alpha=alpha)
        gp = losses.gradient_penalty(D(x_hat)[0], x_hat)    # a separate critic pass, then a double backward
        d_loss = (src_fake.mean() - src_real.mean() + cfg.lambda_cls * losses.au_loss(cls_real, aus_org)
                  + cfg.lambda_gp * gp)
        self.d_opt.zero_grad()
        d_loss.backward()
        self.d_opt.step()
        if (it + 1) % cfg.n_critic == 0:
            x_fake, attn, _ = G(x_real, aus_trg)
            src, cls = D(x_fake)[:2]
            x_rec, attn_rec, _ = G(x_fake, aus_org)
            tv = losses.tv_loss(attn) + losses.tv_loss(attn_rec)
            g_loss = (-src.mean() + cfg.lambda_cls * losses.au_loss(cls, aus_trg)
                      + cfg.lambda_rec * (x_rec - x_real).abs().mean()
                      + cfg.lambda_sat * (attn.mean() + attn_rec.mean()) + cfg.lambda_smooth * tv)
            self.g_opt.zero_grad()
            g_loss.backward()
            self.g_opt.step()

    def run(self, n):
        t0 = time.perf_counter()
        for _ in range(n):
            self.iteration(self.it)
            self.it += 1
        synchronize(self.device)
        return time.perf_counter() - t0


def take_turns(paths, iters, rounds):
    """{name: [ms per iteration in each round]}: the paths run `iters // rounds` iterations each in turn,
    `rounds` times, so that a slow spell of the machine (another job, a neighbour on a shared host)
    falls on all of them alike; each path's figure is its median round."""
    per_round = iters // rounds
    out = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            out[name].append(path.run(per_round) * 1000 / per_round)
    return out


@torch.no_grad()
def inference_batch(solver, train_set, batch_size):
    n = min(batch_size, len(train_set))
    x = torch.stack([torch.from_numpy(train_set.load_uint8(i)) for i in range(n)])
    return (images_to_float(x, solver.device, solver.memory_format),
            train_set.labels[:n].float().to(solver.device))


@torch.no_grad()
def time_inference(solvers, train_set, batch_size, repeats, rounds):
    """{name: frames per second} of test-mode generation (G forward, no grad) in batches of `batch_size`,
    the solvers taking turns as in take_turns (the median round)."""
    inputs = {name: inference_batch(s, train_set, batch_size) for name, s in solvers.items()}

    def forward(name):
        s, (x, c) = solvers[name], inputs[name]
        with s.autocast():
            s.G(x, c, c)   # each face its own target and source (--g_condition relative)

    for name, s in solvers.items():
        s.G.eval()
        forward(name)
        forward(name)
    per_round = max(1, repeats // rounds)
    fps = {name: [] for name in solvers}
    for _ in range(rounds):
        for name, s in solvers.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                forward(name)
            synchronize(s.device)
            fps[name].append(inputs[name][0].shape[0] * per_round / (time.perf_counter() - t0))
    return {name: statistics.median(v) for name, v in fps.items()}


def figures(cfg, solver, round_ms, flops):
    ms = statistics.median(round_ms)
    return {'ms_per_iter': ms, 'round_ms': round_ms, 'images_per_s': cfg.batch_size * 1000 / ms,
            'tflops': flops / (ms / 1000) / 1e12, **switches(solver)}


def switches(solver):
    """The speed switches as the solver has them (resolved from `auto`)."""
    cfg, device = solver.cfg, solver.device
    return {'amp': str(solver.amp_dtype).replace('torch.', '') if solver.amp_dtype else 'off',
            'channels_last': solver.memory_format == torch.channels_last, 'data_cache': cfg.data_cache,
            'fused_adam': adam_kind(cfg, device), 'compile': solver.G_train is not solver.G,
            'small_conv_matmul': small_conv_matmul_on(cfg, device), 'explicit_gp': explicit_gp_on(cfg, device)}


def measure(cfg, train_set):
    """The optimised path's figures; with --bench_compare the plain path's ('baseline') and the original
    loop's too, from the same rounds."""
    rounds = ROUNDS
    warmup, iters = cadence(cfg.bench_warmup, cfg.bench_iters, cfg.n_critic, rounds)
    optimised = TrainingPath(cfg, train_set, warmup + iters)
    solver = optimised.solver
    if solver.device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(solver.device)
    warm_s = optimised.run(warmup)
    peak = peak_memory_mb(solver.device)       # before the other paths exist: the optimised path's own
    paths = {'optimised': optimised}
    if cfg.bench_compare:
        paths['plain'] = TrainingPath(plain_config(cfg), train_set, warmup + iters)
        paths['original'] = OriginalLoop(cfg, train_set)
    if cfg.bench_switches:
        for name, off in switches_on(cfg, solver).items():
            paths[f'without {name}'] = TrainingPath(off, train_set, warmup + iters)
    for name, path in paths.items():
        if name != 'optimised':
            path.run(warmup)
    round_ms = take_turns(paths, iters, rounds)
    flops, f_g, f_d = step_flops(solver.G, solver.D, cfg.image_size, solver.c_dim, cfg.batch_size, cfg.n_critic)
    solvers = {name: paths[name].solver for name in ('optimised', 'plain') if name in paths}
    fps = time_inference(solvers, train_set, cfg.test_batch_size, cfg.bench_infer_repeats, rounds)
    result = figures(cfg, solver, round_ms['optimised'], flops)
    ms = result['ms_per_iter']
    result.update(flops_per_iter=flops, g_forward_flops_per_image=f_g, d_forward_flops_per_image=f_d,
                  peak_memory_mb=peak, inference_frames_per_s=fps['optimised'], warmup_iters=warmup,
                  timed_iters=iters, rounds=rounds, warmup_s=warm_s,
                  compile_s=max(0.0, warm_s - warmup * ms / 1000))
    if cfg.bench_compare:
        base = figures(cfg, paths['plain'].solver, round_ms['plain'], flops)
        base['inference_frames_per_s'] = fps['plain']
        original_ms = statistics.median(round_ms['original'])
        result.update(baseline=base, speedup=base['ms_per_iter'] / ms,
                      inference_speedup=fps['optimised'] / fps['plain'],
                      original_loop={'ms_per_iter': original_ms, 'round_ms': round_ms['original'],
                                     'images_per_s': cfg.batch_size * 1000 / original_ms,
                                     'tflops': flops / (original_ms / 1000) / 1e12},
                      speedup_over_original=original_ms / ms)
    if cfg.bench_switches:
        result['without'] = {name[len('without '):]: {'ms_per_iter': statistics.median(v), 'round_ms': v,
                                                      'change': statistics.median(v) / ms - 1}
                             for name, v in round_ms.items() if name.startswith('without ')}
    return result


def switches_on(cfg, solver):
    """{switch: the config with it turned off} for each speed switch that is on in the optimised path."""
    off_value = {'amp': 'off', 'fused_adam': 'foreach'}
    out = {}
    for name, value in switches(solver).items():
        if value not in (False, 'off', 'false', 'foreach', 'loop'):
            off = copy.copy(cfg)
            setattr(off, name, off_value.get(name, 'false'))
            out[name] = off
    return out


def run(cfg):
    what = dl.resolve_data(cfg, 'au')
    train_set = dl.au_dataset(cfg.image_dir, cfg.attr_path, cfg.image_size, 'train')
    cfg.c_dim = train_set.labels.shape[1]
    device = resolve_device(cfg.device)
    warmup, iters = cadence(cfg.bench_warmup, cfg.bench_iters, cfg.n_critic, ROUNDS)
    print(f'bench: {what}; {cfg.image_size} px, G {cfg.g_conv_dim}/{cfg.g_repeat_num}, D {cfg.d_conv_dim}/'
          f'{cfg.d_repeat_num}, batch {cfg.batch_size}, n_critic {cfg.n_critic}, device {device} '
          f'(CPU kind {cpu_kind()}), '
          f'{warmup} warm-up + {iters} timed iterations (whole n_critic cycles) in {ROUNDS} '
          f'rounds{", the paths taking turns" if cfg.bench_compare else ""}', flush=True)
    result = measure(cfg, train_set)
    result.update(config={k: getattr(cfg, k) for k in ('image_size', 'g_conv_dim', 'd_conv_dim', 'g_repeat_num',
                                                       'd_repeat_num', 'batch_size', 'n_critic')},
                  device=device_name(device), cpu_kind=cpu_kind(), torch=torch.__version__,
                  threads=torch.get_num_threads(), date=time.strftime('%Y-%m-%d'))
    print(format_table(result))
    out_dir = run_folder(cfg, 'results')
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f'bench_{cfg.image_size}px_b{cfg.batch_size}_{device.type}.json')
    with open(path, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'wrote {path}')
    return result


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            model = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), 'cpu')
    except OSError:
        model = 'cpu'
    return f'{model}, {os.cpu_count()} cores'


def format_table(r):
    """The columns: optimised, plain (with --bench_compare) and the original loop's (training figures only)."""
    compare = 'baseline' in r
    rows = [('', 'optimised') + (('plain', 'original loop') if compare else ())]
    for key, fmt in (('ms_per_iter', '{:.1f}'), ('images_per_s', '{:.1f}'), ('tflops', '{:.3f}'),
                     ('inference_frames_per_s', '{:.0f}'), ('amp', '{}'), ('channels_last', '{}'),
                     ('data_cache', '{}'), ('fused_adam', '{}'), ('compile', '{}'), ('small_conv_matmul', '{}'),
                     ('explicit_gp', '{}')):
        row = (key, fmt.format(r[key]))
        if compare:
            original = r.get('original_loop', {})
            row += (fmt.format(r['baseline'][key]), fmt.format(original[key]) if key in original else '')
        rows.append(row)
    rounds = [r] + ([r['baseline'], r['original_loop']] if compare else [])
    rows.append(('ms per round',) + tuple('/'.join(f'{ms:.0f}' for ms in x['round_ms']) for x in rounds))
    rows.append(('peak_memory_mb', f"{r['peak_memory_mb']:.0f}") + (('', '') if compare else ()))
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(cell.rjust(w) for cell, w in zip(row, width)) for row in rows]
    lines.append(f"ms_per_iter: the median of {r['rounds']} rounds of {r['timed_iters'] // r['rounds']} iterations"
                 + (", the three paths taking turns" if compare else ""))
    lines.append(f"compile and warm-up (optimised): {r['warmup_s']:.1f} s for {r['warmup_iters']} iterations, "
                 f"of which about {r['compile_s']:.1f} s beyond the steady state (compiling; outside the timing)")
    if 'speedup' in r:
        lines.append(f"training speedup (plain / optimised ms per iteration): {r['speedup']:.2f}x; "
                     f"inference: {r['inference_speedup']:.2f}x")
    for name, w in r.get('without', {}).items():
        lines.append(f"without {name}: {w['ms_per_iter']:.1f} ms per iteration ({100 * w['change']:+.0f}%; rounds "
                     f"{'/'.join(f'{ms:.0f}' for ms in w['round_ms'])})")
    if 'speedup_over_original' in r:
        lines.append(f"training speedup over the original loop (fp32, NCHW, in-memory tensors, double-backward "
                     f"penalty): {r['speedup_over_original']:.2f}x")
    return '\n'.join(lines)
