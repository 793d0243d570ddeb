"""--mode bench: how fast training and test-mode inference run, measured.

    python main.py --mode bench --image_size 64 --g_conv_dim 32 --d_conv_dim 32 \\
        --g_repeat_num 3 --d_repeat_num 5 --batch_size 16 --bench_compare

Times `--bench_iters` training iterations (critic steps, and generator steps in
the `--n_critic` cadence of training; rounded up to whole cycles) after `--bench_warmup`
untimed ones (at least two cycles, so that every compiled graph has run twice and
compiling, reported on its own line, never falls in the timed window), on
real batches from the configured dataset (loading included), then test-mode
inference (G forward passes in batches of `--test_batch_size`, no grad).
`--bench_compare` repeats both on the plain path in the same process: fp32,
eager, contiguous (NCHW) tensors, a for-loop Adam and the simple data loader
(images decoded from disk every time by DataLoader workers); and times training with
a third loop, what the original vipermu GANimation loop does (time_original_loop):
the code users would otherwise run, so the ratio to it comes from the same run.

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
import time

import torch
import torch.nn as nn

import data_loader as dl
import losses
from solver import Solver, images_to_float
from utils.records import run_folder
from utils.runtime import cpu_kind, explicit_gp_on, resolve_device, small_conv_matmul_on

# --------------------------------------------------------------------------- FLOPs

def forward_flops(model, *inputs):
    """FLOPs of one forward pass of `model` on `inputs` (a batch of one), from its conv layers."""
    total = 0

    def hook(module, args, out):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        c_in = module.in_channels // module.groups
        if isinstance(module, nn.ConvTranspose2d):
            total += 2 * args[0].shape[-2] * args[0].shape[-1] * c_in * module.out_channels * k
        else:
            total += 2 * out.shape[-2] * out.shape[-1] * c_in * module.out_channels * k

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total


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

def plain_config(cfg):
    """The unoptimised path: fp32, eager, NCHW, for-loop Adam, images decoded every time."""
    plain = copy.copy(cfg)
    plain.amp, plain.channels_last, plain.data_cache, plain.fused_adam = 'off', 'false', 'false', 'false'
    plain.compile, plain.small_conv_matmul, plain.explicit_gp = 'false', 'false', 'false'
    return plain


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB; the process's peak RSS


def cadence(warmup, iters, n_critic):
    """(warm-up, timed) iteration counts in whole n_critic cycles: the warm-up at least two cycles, so that
    every compiled graph (the generator with and without grad, their backward) has run twice before the
    clock starts, and the timed window holds exactly its share of generator steps."""
    cycles = -(-max(warmup, 2 * n_critic) // n_critic)
    return cycles * n_critic, -(-iters // n_critic) * n_critic


def time_training(cfg, train_set, warmup, iters):
    """(ms per iteration over the timed iterations, the solver, seconds of the warm-up iterations).
    Counts from cadence(); the warm-up holds the compiling."""
    warmup, iters = cadence(warmup, iters, cfg.n_critic)
    run_cfg = copy.copy(cfg)
    run_cfg.planned_iters = cfg.num_iters   # --compile auto decides by the run benchmarked, not this short one
    run_cfg.num_iters = warmup + iters
    run_cfg.num_iters_decay = 0
    solver = Solver(run_cfg, train_set)
    if solver.device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(solver.device)
    batches = solver.batches(0)
    t0 = time.perf_counter()
    for it in range(warmup):
        x, aus = next(batches)
        solver.train_step(it, x, aus)
    _sync(solver.device)
    t1 = time.perf_counter()
    for it in range(warmup, warmup + iters):
        x, aus = next(batches)   # loading is part of what is timed
        solver.train_step(it, x, aus)
    _sync(solver.device)
    ms = (time.perf_counter() - t1) * 1000 / iters
    return ms, solver, t1 - t0


def time_original_loop(cfg, train_set, warmup, iters):
    """ms per iteration of a loop that does what the original vipermu GANimation training loop does, written
    here from its facts: fp32, NCHW, the training set held as one in-memory tensor, separate critic
    passes over the real, the fake and the interpolated images, the gradient penalty by double backward,
    torch.optim.Adam, and every n_critic iterations a generator step with the cycle's second generator
    pass. The networks are this code's (the same shapes; plain_config), so only the loop differs."""
    warmup, iters = cadence(warmup, iters, cfg.n_critic)
    solver = Solver(plain_config(cfg), train_set)
    G, D, device = solver.G, solver.D, solver.device
    g_opt = torch.optim.Adam(G.parameters(), cfg.g_lr, betas=(cfg.beta1, cfg.beta2))
    d_opt = torch.optim.Adam(D.parameters(), cfg.d_lr, betas=(cfg.beta1, cfg.beta2))
    images = torch.stack([torch.from_numpy(train_set.load_uint8(i)) for i in range(len(train_set))])
    images = images_to_float(images, device, torch.contiguous_format)
    labels = train_set.labels.float().to(device)
    rng = torch.Generator().manual_seed(cfg.seed)
    b = cfg.batch_size

    def iteration(it):
        idx = torch.randint(len(images), (b,), generator=rng)
        x_real, aus_org = images[idx], labels[idx]
        aus_trg = labels[torch.randint(len(images), (b,), generator=rng)]
        x_fake = G(x_real, aus_trg)[0]
        src_real, cls_real = D(x_real)[:2]
        src_fake = D(x_fake.detach())[0]
        x_hat = losses.interpolate(x_real, x_fake.detach(), alpha=torch.rand(b, 1, 1, 1, generator=rng).to(device))
        gp = losses.gradient_penalty(D(x_hat)[0], x_hat)    # a separate critic pass, then a double backward
        d_loss = (src_fake.mean() - src_real.mean() + cfg.lambda_cls * losses.au_loss(cls_real, aus_org)
                  + cfg.lambda_gp * gp)
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        if (it + 1) % cfg.n_critic == 0:
            x_fake, attn, _ = G(x_real, aus_trg)
            src, cls = D(x_fake)[:2]
            x_rec, attn_rec, _ = G(x_fake, aus_org)
            tv = losses.tv_loss(attn) + losses.tv_loss(attn_rec)
            g_loss = (-src.mean() + cfg.lambda_cls * losses.au_loss(cls, aus_trg)
                      + cfg.lambda_rec * (x_rec - x_real).abs().mean()
                      + cfg.lambda_sat * (attn.mean() + attn_rec.mean()) + cfg.lambda_smooth * tv)
            g_opt.zero_grad()
            g_loss.backward()
            g_opt.step()

    for it in range(warmup):
        iteration(it)
    _sync(device)
    t0 = time.perf_counter()
    for it in range(warmup, warmup + iters):
        iteration(it)
    _sync(device)
    return (time.perf_counter() - t0) * 1000 / iters


@torch.no_grad()
def time_inference(solver, train_set, batch_size, repeats):
    """Frames per second of test-mode generation (G forward, no grad) in batches of `batch_size`."""
    n = min(batch_size, len(train_set))
    x = torch.stack([torch.from_numpy(train_set.load_uint8(i)) for i in range(n)])
    x = images_to_float(x, solver.device, solver.memory_format)
    c = train_set.labels[:n].float().to(solver.device)
    solver.G.eval()
    for _ in range(2):
        with solver.autocast():
            solver.G(x, c, c)   # each face its own target and source (--g_condition relative)
    _sync(solver.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        with solver.autocast():
            solver.G(x, c, c)   # each face its own target and source (--g_condition relative)
    _sync(solver.device)
    return n * repeats / (time.perf_counter() - t0)


def measure(cfg, train_set):
    ms, solver, warm_s = time_training(cfg, train_set, cfg.bench_warmup, cfg.bench_iters)
    warmup, iters = cadence(cfg.bench_warmup, cfg.bench_iters, cfg.n_critic)
    flops, f_g, f_d = step_flops(solver.G, solver.D, cfg.image_size, solver.c_dim, cfg.batch_size, cfg.n_critic)
    peak = peak_memory_mb(solver.device)
    fps = time_inference(solver, train_set, cfg.test_batch_size, cfg.bench_infer_repeats)
    return {'ms_per_iter': ms, 'images_per_s': cfg.batch_size * 1000 / ms, 'tflops': flops / (ms / 1000) / 1e12,
            'flops_per_iter': flops, 'g_forward_flops_per_image': f_g, 'd_forward_flops_per_image': f_d,
            'peak_memory_mb': peak, 'inference_frames_per_s': fps, 'warmup_iters': warmup, 'timed_iters': iters,
            'warmup_s': warm_s, 'compile_s': max(0.0, warm_s - warmup * ms / 1000),
            'amp': str(solver.amp_dtype).replace('torch.', '') if solver.amp_dtype else 'off',
            'channels_last': solver.memory_format == torch.channels_last,
            'data_cache': cfg.data_cache, 'fused_adam': adam_kind(solver.d_optim),
            'compile': solver.G_train is not solver.G, 'small_conv_matmul': small_conv_matmul_on(cfg, solver.device),
            'explicit_gp': explicit_gp_on(cfg, solver.device)}


def adam_kind(optim):
    return 'fused' if optim.defaults.get('fused') else 'foreach' if optim.defaults.get('foreach') else 'loop'


def run(cfg):
    what = dl.resolve_data(cfg, 'au')
    train_set = dl.au_dataset(cfg.image_dir, cfg.attr_path, cfg.image_size, 'train')
    cfg.c_dim = train_set.labels.shape[1]
    device = resolve_device(cfg.device)
    warmup, iters = cadence(cfg.bench_warmup, cfg.bench_iters, cfg.n_critic)
    print(f'bench: {what}; {cfg.image_size} px, G {cfg.g_conv_dim}/{cfg.g_repeat_num}, D {cfg.d_conv_dim}/'
          f'{cfg.d_repeat_num}, batch {cfg.batch_size}, n_critic {cfg.n_critic}, device {device} '
          f'(CPU kind {cpu_kind()}), '
          f'{warmup} warm-up + {iters} timed iterations (whole n_critic cycles)', flush=True)
    result = measure(cfg, train_set)
    result.update(config={k: getattr(cfg, k) for k in ('image_size', 'g_conv_dim', 'd_conv_dim', 'g_repeat_num',
                                                       'd_repeat_num', 'batch_size', 'n_critic')},
                  device=device_name(device), cpu_kind=cpu_kind(), torch=torch.__version__,
                  threads=torch.get_num_threads(), date=time.strftime('%Y-%m-%d'))
    if cfg.bench_compare:
        base = measure(plain_config(cfg), train_set)
        base.pop('peak_memory_mb')   # the process-wide peak would mix both runs on CPU
        result['baseline'] = base
        result['speedup'] = base['ms_per_iter'] / result['ms_per_iter']
        result['inference_speedup'] = result['inference_frames_per_s'] / base['inference_frames_per_s']
        ms = time_original_loop(cfg, train_set, cfg.bench_warmup, cfg.bench_iters)
        result['original_loop'] = {'ms_per_iter': ms, 'images_per_s': cfg.batch_size * 1000 / ms,
                                   'tflops': result['flops_per_iter'] / (ms / 1000) / 1e12}
        result['speedup_over_original'] = ms / result['ms_per_iter']
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
    rows.append(('peak_memory_mb', f"{r['peak_memory_mb']:.0f}") + (('', '') if compare else ()))
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(cell.rjust(w) for cell, w in zip(row, width)) for row in rows]
    lines.append(f"compile and warm-up (optimised): {r['warmup_s']:.1f} s for {r['warmup_iters']} iterations, "
                 f"of which about {r['compile_s']:.1f} s beyond the steady state (compiling; outside the timing)")
    if 'speedup' in r:
        lines.append(f"training speedup (plain / optimised ms per iteration): {r['speedup']:.2f}x; "
                     f"inference: {r['inference_speedup']:.2f}x")
    if 'speedup_over_original' in r:
        lines.append(f"training speedup over the original loop (fp32, NCHW, in-memory tensors, double-backward "
                     f"penalty): {r['speedup_over_original']:.2f}x")
    return '\n'.join(lines)
