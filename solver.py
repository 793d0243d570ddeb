"""Training of GANimation: builds networks and optimisers, runs the loop, writes
samples, TensorBoard logs and checkpoints. Losses live in losses.py.

One *iteration* is one critic update; the generator is updated every
`n_critic` iterations (StarGAN convention). All randomness of an iteration
(batch order, flips, targets, gradient-penalty points) comes from generators
seeded with (seed, iteration), so a resumed run repeats exactly what the
uninterrupted run would have done.
"""
import collections
import copy
import os
import signal
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data_loader
import losses
import synthetic_faces as sf
from data_loader import (ReadableItems, ResumableBatchSampler, batch_indices, drop_unreadable, repeat_factors,
                         uint8_cache, worker_ignores_stop_signals)
from model import Discriminator, Generator, Trained, check_removed_options, critic_options, generator_options
from utils import checkpoint, distributed
from utils import visualize as vis
from utils.errors import CheckpointError, DataError, FlagError, NonFiniteTraining, TrainingInterrupted
from utils.fast_conv import use_matmul_for_small_convs
from utils.records import RUN_FOLDERS, STAGES, NoWriter, RecordWindow, config_dict, duration, run_folder, write_config
from utils.runtime import (adam_kind, channels_last_on, compiled, describe_switches, explicit_gp_on, resolve_amp,
                           resolve_device, resolve_flag, small_conv_matmul_on)

SIGNAL_CHECK_EVERY = 10   # under DDP: a SIGTERM stops all ranks at most this many iterations later


def make_ema(G, cfg):
    """A frozen copy of G that follows its weights as an exponential moving average
    (--g_ema_beta > 0), or None. Averaging the generator's weights removes much of the
    step-to-step jitter of GAN training from what is sampled, tested and evaluated
    (Karras et al., Yazici et al.)."""
    beta = getattr(cfg, 'g_ema_beta', 0.0) or 0.0
    if beta <= 0:
        return None
    if beta >= 1:
        raise FlagError(f'--g_ema_beta must be below 1, got {beta}')
    return copy.deepcopy(G).requires_grad_(False).eval()


@torch.no_grad()
def update_ema(G_ema, G, beta, step):
    """p_ema <- b p_ema + (1 - b) p, with b = min(beta, (1 + step) / (10 + step)) so that the
    average does not drag the untrained first weights along; buffers are copied."""
    b = min(beta, (1 + step) / (10 + step))
    ema_params, params = list(G_ema.parameters()), list(G.parameters())
    torch._foreach_lerp_(ema_params, params, 1 - b)
    for be, bg in zip(G_ema.buffers(), G.buffers()):
        be.copy_(bg)


def make_adam(params, lr, cfg, device):
    """Adam with one fused kernel (CUDA and CPU: no temporaries; on the CPU about twice as fast
    as the multi-tensor path, which allocates a few tensors the size of the weights per step),
    --fused_adam foreach for the multi-tensor updates, or the plain per-parameter loop with
    --fused_adam false."""
    kind = adam_kind(cfg, device)
    if kind == 'fused':
        return torch.optim.Adam(params, lr, (cfg.beta1, cfg.beta2), fused=True)
    return torch.optim.Adam(params, lr, (cfg.beta1, cfg.beta2), foreach=kind == 'foreach')


def sample_targets(labels, batch_size, generator, noise=0.1, weights=None):
    """Target conditions: rows of the in-memory label table (drawn in proportion to `weights` when given:
    --repeat_threshold) plus U(-noise, noise), clipped to [0, 1]. Drawn for the global batch of all ranks;
    this rank gets its rows (utils/distributed.py)."""
    n = batch_size * distributed.STATE.world
    if weights is None:
        idx = torch.randint(0, labels.shape[0], (n,), device=labels.device, generator=generator)
    else:
        idx = torch.multinomial(weights, n, replacement=True, generator=generator)
    jitter = (torch.rand(n, labels.shape[1], device=labels.device, generator=generator) * 2 - 1) * noise
    return distributed.rows((labels[idx] + jitter).clamp_(0, 1))


def random_flip(x, generator):
    """Horizontal flip of about half the batch (AUs are symmetric, labels stay valid)."""
    flip = torch.rand(x.shape[0] * distributed.STATE.world, device=x.device, generator=generator) < 0.5
    return torch.where(distributed.rows(flip).view(-1, 1, 1, 1), x.flip(-1), x)


def random_translation(x, generator, fraction=0.125):
    """DiffAugment's translation (Zhao et al. 2020): each image shifted by a whole number of pixels, up to
    `fraction` of its size along each axis, the uncovered border zero-filled. Differentiable in x, so the
    generator is scored on shifted fakes as the critic learned on shifted real and fake images: the critic
    sees each training face at many positions and cannot score the generator by memorised pixels."""
    b, _, h, w = x.shape
    max_shift = max(int(round(min(h, w) * fraction)), 1)
    shift = torch.randint(-max_shift, max_shift + 1, (b * distributed.STATE.world, 2), device=x.device,
                          generator=generator)
    shift = distributed.rows(shift)
    padded = F.pad(x, (max_shift,) * 4)
    rows_idx = torch.arange(h, device=x.device) + max_shift - shift[:, :1]     # (b, h): output row i reads row i - dy
    cols_idx = torch.arange(w, device=x.device) + max_shift - shift[:, 1:]     # (b, w)
    batch_idx = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded[batch_idx, :, rows_idx[:, :, None], cols_idx[:, None, :]]   # (b, h, w, C)
    return out.permute(0, 3, 1, 2)


def augmented(cfg):
    return getattr(cfg, 'd_augment', 'none') == 'translation'


def critic_view(x, cfg, generator):
    """What the critic's realism head reads of real and fake images: the images themselves, or with
    --d_augment translation randomly shifted copies (a new shift per image and per call). The AU head reads
    unshifted images in one more pass: on shifted ones its last layer, which weighs each of the 2 x 2 final
    cells apart, did not learn in 1,000 iterations (loss at the labels' variance) and the generator copied."""
    return random_translation(x, generator) if augmented(cfg) else x


def interpolate(x_real, x_fake, generator):
    """losses.interpolate with the weights drawn for the global batch (this rank's rows)."""
    alpha = torch.rand(x_real.shape[0] * distributed.STATE.world, 1, 1, 1, device=x_real.device, generator=generator)
    return losses.interpolate(x_real, x_fake, alpha=distributed.rows(alpha))


def images_to_float(x_uint8_nhwc, device, memory_format):
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1] on `device`; the NHWC
    layout already is channels_last, so no copy is needed for it."""
    x = x_uint8_nhwc.to(device, non_blocking=True).permute(0, 3, 1, 2)
    x = x.float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=memory_format)


# One critic pass (Solver.critic_pass): the (scores, labels, codes) of the real, fake and interpolated
# images (None without interpolates in the pass) and of the extra parts, the regulariser's value and the
# images it was taken at.
CriticPass = collections.namedtuple('CriticPass', 'real fake interpolates extra reg reg_at')


class Solver:
    def __init__(self, cfg, train_set, sample_set=None):
        self.cfg = cfg
        self.train_set = train_set
        self.sample_set = sample_set if sample_set is not None else train_set
        self.device = resolve_device(cfg.device)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.memory_format = torch.channels_last if channels_last_on(cfg, self.device) else torch.contiguous_format
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = not getattr(cfg, 'deterministic', False)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if getattr(cfg, 'deterministic', False):
            os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)   # warn, not fail, where CUDA has no such kernel
        self.label_names = list(train_set.label_names)
        self.c_dim = len(self.label_names)
        if adv_loss(cfg) not in ('wgan-gp', 'ns-r1'):
            raise FlagError(f'--adv_loss: expected wgan-gp or ns-r1, found {adv_loss(cfg)!r}')
        if getattr(cfg, 'd_augment', 'none') not in ('none', 'translation'):
            raise FlagError(f'--d_augment: expected none or translation, found {cfg.d_augment!r}')
        self.rank, self.world = distributed.STATE.rank, distributed.STATE.world
        self.is_main = self.rank == 0      # only rank 0 writes logs, samples and checkpoints
        torch.manual_seed(cfg.seed)
        self.build_networks()
        if getattr(cfg, 'init_from', ''):
            self.start_from(cfg.init_from)
        distributed.broadcast_modules(m for _, m in self.saved_modules())
        self.labels = train_set.labels.float().to(self.device)   # the target table, in memory
        # --repeat_threshold: images (on the host) and target rows (on the device) drawn by repeat factors
        self.sample_weights = repeat_factors(train_set.labels, cfg.repeat_threshold) if cfg.repeat_threshold else None
        self.target_weights = None if self.sample_weights is None else self.sample_weights.float().to(self.device)
        self.dirs = {kind: run_folder(cfg, kind) for kind in RUN_FOLDERS}
        self.start_iter = 0
        self.iteration = 0
        self.images = None
        self.writer = None
        self.mask_extreme_logs = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.skips = None          # see track_skips
        self.last_check = 0
        self.last_good_checkpoint = None
        if cfg.num_iters_decay > cfg.num_iters and self.is_main:
            print(f'note: --num_iters_decay {cfg.num_iters_decay} is longer than the run (--num_iters '
                  f'{cfg.num_iters}): the learning rates decay to 0 over the whole run')

    @staticmethod
    def datasets(cfg):
        """(what the data is, training set, sample set): the AU data of the flags (data_loader.resolve_data),
        the training set ready for the loop, held-out images for the sample grids (else the training set)."""
        aus = [a for a in cfg.aus.split(',') if a.strip()] if cfg.aus else None
        what = data_loader.resolve_data(cfg, 'au')
        train_set = data_loader.prepare_training_set(
            data_loader.au_dataset(cfg.image_dir, cfg.attr_path, cfg.image_size, 'train', aus),
            resolve_flag(cfg.data_cache, True))
        try:
            sample_set = data_loader.au_dataset(cfg.image_dir, cfg.attr_path, cfg.image_size, 'test', aus)
        except DataError:
            sample_set = train_set
        if not aus and train_set.labels.shape[1] != cfg.c_dim:
            print(f'note: the labels have {train_set.labels.shape[1]} AUs; using that as c_dim')
        cfg.c_dim = train_set.labels.shape[1]
        return what, train_set, sample_set

    def describe(self, what):
        """The start-up lines: the data and the device settings."""
        print(f'dataset: {what}: {len(self.train_set)} training images, conditions: {" ".join(self.label_names)}')
        print(f'device: {self.device}, bf16 autocast: {self.amp_dtype is not None}; '
              f'{describe_switches(self.cfg, self.device)} (docs/benchmarks.md: where each helps)')

    def build_networks(self):
        """G, D, their optimisers and G_train (G, compiled with --compile)."""
        cfg = self.cfg
        self.G = Generator(cfg.g_conv_dim, self.c_dim, cfg.g_repeat_num, **generator_options(vars(cfg))).to(
            self.device, memory_format=self.memory_format)
        self.D = Discriminator(cfg.image_size, cfg.d_conv_dim, self.c_dim, cfg.d_repeat_num,
                               **critic_options(vars(cfg))).to(self.device, memory_format=self.memory_format)
        use_matmul_for_small_convs(self.D, small_conv_matmul_on(cfg, self.device))
        # torch.compile for the generator's training passes. D stays eager: with --explicit_gp false its
        # gradient penalty needs a double backward, which compiled graphs do not support, and with
        # it (the CPU default) compiling D was measured to gain nothing.
        self.G_train = compiled(self.G, cfg, self.device)
        self.G_ema = make_ema(self.G, cfg)
        self.g_optim = make_adam(self.G.parameters(), cfg.g_lr, cfg, self.device)
        self.d_optim = make_adam(self.D.parameters(), cfg.d_lr, cfg, self.device)

    # ----------------------------------------------------------------- helpers
    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def iteration_generator(self, it):
        return torch.Generator(device=self.device).manual_seed(self.cfg.seed * 1_000_003 + it + 17)

    def apply_step(self, loss, optim, record):
        """Backward, then the optimiser step, unless the loss or a gradient is not finite: then the
        step is skipped (weights and optimiser state stay as they were). `record['skipped/D']` (or
        `/G`) gets the flag as a 0-dim tensor, which train() reads at its next sync point.

        The fused Adam reads the flag on the device (`found_inf`, the hook the AMP grad scaler uses),
        so the check costs no host-device sync; the other optimisers need the flag on the host."""
        loss.backward()
        params = [p for g in optim.param_groups for p in g['params']]
        loss_mean = distributed.average(loss, params)      # gradients averaged over ranks (one all-reduce)
        grads = [p.grad for p in params if p.grad is not None]
        total = loss_mean.float() + torch.nn.utils.get_total_norm(grads).float()
        skipped = (~torch.isfinite(total)).float()
        record['skipped/G' if optim is self.g_optim else 'skipped/D'] = skipped
        if optim.defaults.get('fused'):
            optim.found_inf = skipped
            optim.step()
        elif skipped.item():
            optim.zero_grad(set_to_none=True)
        else:
            optim.step()

    def learning_rates(self, it):
        """Linear decay to zero over the last num_iters_decay iterations, or over the whole run
        when that window is longer than the run: a short run with the original code's window (100,000)
        would otherwise start at a small fraction of --g_lr and --d_lr and hardly learn."""
        cfg = self.cfg
        decay = min(cfg.num_iters_decay, cfg.num_iters)
        frac = 1.0 if it < cfg.num_iters - decay or decay <= 0 else (cfg.num_iters - it) / decay
        return cfg.g_lr * frac, cfg.d_lr * frac

    def set_learning_rates(self, it):
        g_lr, d_lr = self.learning_rates(it)
        for group in self.g_optim.param_groups:
            group['lr'] = g_lr
        for group in self.d_optim.param_groups:
            group['lr'] = d_lr

    # ----------------------------------------------------------------- data
    def batches(self, start):
        """Yields (x_real float NCHW on device, aus_org) for iterations start..num_iters-1."""
        cfg, n = self.cfg, len(self.train_set)
        if resolve_flag(cfg.data_cache, True):
            if self.images is None:
                arr = getattr(self.train_set, 'cache_array', None)
                self.images = torch.from_numpy((arr if arr is not None else uint8_cache(self.train_set))
                                               .view(np.ndarray))
            rows = getattr(self.train_set, 'cache_rows', None)   # when unreadable images were dropped
            pin = self.device.type == 'cuda'
            for it in range(start, cfg.num_iters):
                idx = batch_indices(n, cfg.batch_size, it, cfg.seed, self.rank, self.world, self.sample_weights)
                x = self.images[idx if rows is None else rows[idx]]
                yield images_to_float(x.pin_memory() if pin else x, self.device, self.memory_format), \
                    self.labels[idx.to(self.device, non_blocking=True)]
        else:   # the simple path: decode every image every time, in DataLoader workers
            loader = torch.utils.data.DataLoader(
                ReadableItems(self.train_set), num_workers=cfg.num_workers, pin_memory=self.device.type == 'cuda',
                batch_sampler=ResumableBatchSampler(n, cfg.batch_size, cfg.seed, start, cfg.num_iters,
                                                    self.rank, self.world, self.sample_weights),
                worker_init_fn=worker_ignores_stop_signals)
            for batch in loader:
                x, aus = drop_unreadable(*batch)
                yield x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format), \
                    aus.float().to(self.device)

    # ----------------------------------------------------------------- one iteration
    def train_step(self, it, x_real, aus_org):
        cfg = self.cfg
        gen = self.iteration_generator(it)
        self.iteration = it
        self.set_learning_rates(it)
        x_real = random_flip(x_real, gen)
        aus_trg = sample_targets(self.labels, x_real.shape[0], gen, cfg.target_noise, self.target_weights)
        g_step = (it + 1) % cfg.n_critic == 0

        # The fake batch is computed once: with grad when the generator is
        # updated in this iteration (its graph does not involve the critic),
        # without grad otherwise.
        with torch.set_grad_enabled(g_step), self.autocast():
            x_fake, attn_fake, color_fake = self.G_train(x_real, aus_trg, aus_org)

        record = self.critic_step(x_real, aus_org, x_fake.detach(), gen)
        if g_step:
            record.update(self.generator_step(x_real, aus_org, aus_trg, x_fake, attn_fake, gen, color_fake))
        return record

    def critic_step(self, x_real, aus_org, x_fake, gen):
        """The critic's loss (losses.critic_loss): realism of real and fake images, the AU regression of
        the real ones, and the regulariser, WGAN-GP or R1; all from one critic pass. With --d_augment the
        realism head reads shifted copies and the AU head the unshifted real images (see critic_view)."""
        cfg = self.cfg
        self.D.requires_grad_(True)
        self.d_optim.zero_grad(set_to_none=True)
        r1 = adv_loss(cfg) == 'ns-r1'
        p = self.critic_pass(critic_view(x_real, cfg, gen), critic_view(x_fake, cfg, gen), gen, r1,
                             explicit=not r1 and explicit_gp_on(cfg, self.device),
                             extra=lambda: [x_real.detach()] if augmented(cfg) else [])
        au_pred_real = (p.extra[0] if p.extra else p.real)[1]
        loss, record = losses.critic_loss(p.real[0], p.fake[0], au_pred_real, aus_org, p.reg,
                                          cfg.lambda_r1 if r1 else cfg.lambda_gp, cfg.lambda_cls, adv_loss(cfg))
        self.apply_step(loss, self.d_optim, record)
        return record

    def critic_pass(self, x_real, x_fake, gen, r1, explicit, extra=None):
        """One critic pass over real and fake images, with what the regulariser needs: R1 takes the
        gradient at the real images (they take part with requires_grad), WGAN-GP at real-fake
        interpolates, which take part in the pass (for a double backward) unless the penalty is written
        out (`explicit`, --explicit_gp). `extra()`: more images for the same pass, drawn after the
        interpolates. Returns a CriticPass: (scores, labels, codes) of each part, the penalty and the
        images it was taken at. Shared by both models."""
        b = x_real.shape[0]
        with self.autocast():
            if r1:
                x_real = x_real.detach().requires_grad_(True)
                reg_at, parts = x_real, [x_real, x_fake]
            else:
                reg_at = interpolate(x_real, x_fake, gen)
                parts = [x_real, x_fake] + ([] if explicit else [reg_at])
            n_main = len(parts)
            parts += extra() if extra else []
            heads = self.D(torch.cat(parts))
            if explicit:
                reg = self.written_out_gradient_penalty(reg_at)
        outs = list(zip(*(h.split(b) if h is not None else [None] * len(parts) for h in heads)))
        if not explicit:
            reg = (losses.r1_penalty(outs[0][0], x_real) if r1
                   else losses.gradient_penalty(outs[2][0], reg_at))
        return CriticPass(outs[0], outs[1], outs[2] if n_main == 3 else None, outs[n_main:], reg, reg_at)

    def written_out_gradient_penalty(self, x_hat):
        """The WGAN-GP penalty at `x_hat` from the critic's input gradient written out (--explicit_gp)."""
        return losses.penalty_of_gradient(self.D.realism_input_gradient(x_hat.detach()))

    def generator_step(self, x_real, aus_org, aus_trg, x_fake, attn_fake, gen, color_fake=None):
        cfg = self.cfg
        self.D.requires_grad_(False)
        self.g_optim.zero_grad(set_to_none=True)
        with self.autocast():
            if augmented(cfg):   # the realism head reads the shifted fakes, the AU head the unshifted ones
                b = x_fake.shape[0]
                out_src, out_cls, _ = self.D(torch.cat([critic_view(x_fake, cfg, gen), x_fake]))
                out_src, out_cls = out_src[:b], out_cls[b:]
            else:
                out_src, out_cls, _ = self.D(x_fake)
            x_rec, attn_rec, color_rec = self.G_train(x_fake, aus_org, aus_trg)
            virtual = None
            if cfg.virtual:
                aus_virtual = sample_targets(self.labels, x_real.shape[0], gen, cfg.target_noise, self.target_weights)
                x_v, attn_v, _ = self.G_train(x_fake, aus_virtual, aus_trg)
                x_vrec, attn_vrec, _ = self.G_train(x_v, aus_trg, aus_virtual)
                virtual = (x_vrec, x_fake.detach(), [attn_v, attn_vrec])
        loss, record = losses.generator_loss(out_src, out_cls, aus_trg, x_real, x_rec, [attn_fake, attn_rec],
                                             generator_au_weight(cfg, self.iteration), cfg.lambda_rec,
                                             cfg.lambda_sat, cfg.lambda_smooth,
                                             virtual, cfg.virtual_weight, adv_loss(cfg))
        if cfg.lambda_color_keep > 0 and attn_fake is not None:
            color_keep = (losses.color_keep_loss(color_fake, x_real, attn_fake)
                          + losses.color_keep_loss(color_rec, x_fake.detach(), attn_rec)) / 2
            loss = loss + cfg.lambda_color_keep * color_keep
            record['G/color_keep'] = color_keep.detach()
        record['G/loss'] = loss.detach().float()      # with the optional terms above
        self.apply_step(loss, self.g_optim, record)
        if self.G_ema is not None:    # after a skipped step G is unchanged, and the average moves towards it
            update_ema(self.G_ema, self.G, cfg.g_ema_beta, (self.iteration + 1) // cfg.n_critic)
        record['G/attn_mean'] = attn_fake.detach().float().mean()
        return record

    # ----------------------------------------------------------------- loop
    def train(self):
        cfg = self.cfg
        for d in self.dirs.values():
            os.makedirs(d, exist_ok=True)
        resume = str(cfg.resume_iters or '').lower()
        if resume == 'auto':    # pre-emptible jobs: the same command starts or resumes
            resume = 'latest' if checkpoint.list_checkpoints(self.dirs['models']) else ''
        if resume not in ('', 'none'):
            self.restore(resume)
            distributed.broadcast_modules(m for _, m in self.saved_modules())
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(self.dirs['logs']) if self.is_main else NoWriter()
        fixed = self.fixed_samples() if self.is_main else None
        window = RecordWindow()
        bar = tqdm(total=cfg.num_iters, initial=self.start_iter, dynamic_ncols=True, desc='train',
                   mininterval=1.0, smoothing=0.05, disable=not self.is_main)
        it = self.start_iter
        try:
            with StopSignals() as stop:
                for it, (x_real, aus_org) in enumerate(self.batches(self.start_iter), self.start_iter):
                    record = self.train_step(it, x_real, aus_org)
                    done = it + 1
                    if it == self.start_iter:
                        bar.unpause()   # the first step compiles: out of the rate, or the ETA reads hours
                    window.add(record)
                    self.track_skips(record)
                    bar.update(1)
                    log_now = done % cfg.log_step == 0 or done == cfg.num_iters
                    # under DDP, ranks agree on a stop signal only at log steps and every SIGNAL_CHECK_EVERY
                    signum = distributed.any_rank(stop.signum, now=log_now or done % SIGNAL_CHECK_EVERY == 0)
                    # The host reads the device's figures only here (a checkpoint must know whether
                    # the last steps were skipped), so the device is never kept waiting in between.
                    if log_now or done % cfg.model_save_step == 0 or signum:
                        self.check_nonfinite(done, window)
                    if log_now:
                        means = window.means()
                        self.log(done, means)
                        bar.set_postfix_str(self.postfix(means), refresh=False)
                    self.after_iteration(done, fixed, signum)
        finally:
            bar.close()
            self.writer.close()
        if self.nonfinite_total:
            print(f'{self.nonfinite_total} iteration(s) had a step skipped for a non-finite loss or gradient')
        return it + 1

    def after_iteration(self, done, fixed, signum):
        """Samples, checkpoint and eval on their cadence; after a signal (on any rank), a
        checkpoint and the stop."""
        cfg = self.cfg
        if self.is_main and (done % cfg.sample_step == 0 or done == cfg.num_iters):
            self.save_samples(done, fixed)
        if done % cfg.model_save_step == 0 or done == cfg.num_iters or signum:
            self.save_checkpoint(done)
        if self.is_main and cfg.eval_step and done % cfg.eval_step == 0 and getattr(self, 'eval_hook', None):
            self.eval_hook(self, done)
        if signum:
            raise TrainingInterrupted(f'{signal.Signals(signum).name}: stopped after iteration {done}; saved '
                                      f'{self.last_good_checkpoint}; continue with --resume_iters latest',
                                      128 + signum)

    def track_skips(self, record):
        """Counts skipped steps on the device: the current run of iterations with a skipped step,
        the longest run and the total since the last check_nonfinite()."""
        skipped = torch.stack([v for k, v in record.items() if k.startswith('skipped/')]).amax()
        if self.skips is None:
            self.skips = torch.zeros(3, device=skipped.device)
        run = (self.skips[0] + 1) * skipped
        self.skips = torch.stack([run, torch.maximum(self.skips[1], run), self.skips[2] + skipped])

    def check_nonfinite(self, done, window):
        """Warn about steps skipped since the last check; stop once --nonfinite_patience iterations
        in a row had one (noticed here, at most a log step after it happens)."""
        if self.skips is None:
            return
        run, longest, count = (int(v) for v in self.skips.tolist())
        self.skips = torch.tensor([run, run, 0], dtype=torch.float32, device=self.skips.device)
        self.nonfinite_in_a_row = run
        since, self.last_check = self.last_check, done
        if not count:
            return
        self.nonfinite_total += count
        parts = window.nonfinite_parts()
        why = f'non-finite {", ".join(parts)}' if parts else 'a non-finite loss or gradient'
        tqdm.write(f'warning: iterations {since + 1}-{done}: {count} step(s) skipped for {why}')
        if longest >= self.cfg.nonfinite_patience:
            raise NonFiniteTraining(
                f'iteration {done}: non-finite losses or gradients in {longest} iterations in a row; '
                f'training stopped. Last good checkpoint: {self.last_good_checkpoint or "none"} (resume from it '
                f'with a lower learning rate, or check the data)', 3)

    @staticmethod
    def postfix(m):
        keys = [('D/loss', 'D'), ('G/loss', 'G'), ('G/au', 'au'), ('G/rec', 'rec'), ('G/attn_mean', 'attn')]
        return ' '.join(f'{short}={m[k]:.3f}' for k, short in keys if k in m)

    def log(self, it, means):
        g_lr, d_lr = self.learning_rates(it - 1)
        for k, v in means.items():
            self.writer.add_scalar(k, v, it)
        self.writer.add_scalar('lr/G', g_lr, it)
        self.writer.add_scalar('lr/D', d_lr, it)
        attn = means.get('G/attn_mean')
        if attn is None:
            return
        what = mask_extreme(attn)
        self.mask_extreme_logs = self.mask_extreme_logs + 1 if what else 0
        if self.mask_extreme_logs and self.mask_extreme_logs % MASK_WARN_LOGS == 0:
            tqdm.write(f'warning: iteration {it}: the mean attention mask has stayed {what}; mean A = {attn:.3f}')

    # ----------------------------------------------------------------- samples
    def fixed_samples(self, n=6, num_targets=4):
        """Fixed inputs (held-out images when available) and fixed target conditions."""
        rows, images = data_loader.load_readable(self.sample_set, range(min(n, len(self.sample_set))))
        x = images_to_float(torch.from_numpy(np.stack(images)), self.device, self.memory_format)
        targets, titles = fixed_targets(self.label_names, self.labels.cpu(), num_targets, self.cfg.seed)
        aus_in = self.sample_set.labels[rows].float().to(self.device)   # their own AUs, for the reconstruction
        return x, targets.to(self.device), titles, aus_in

    @torch.no_grad()
    def save_samples(self, it, fixed):
        x, targets, titles, aus_in = fixed
        G = self.G_eval
        G.eval()   # no effect on the networks (no dropout, IN uses per-image statistics)
        with self.autocast():
            outs = []
            for t in targets:
                c = t.expand(x.shape[0], -1)
                y, attn, color = G(x, c, aus_in)
                rec, _, _ = G(y, aus_in, c)
                outs.append((attn, color, y, rec))
        if G is self.G:
            G.train()
        rows = []
        if self.cfg.dataset_kind == 'synthetic':   # what each target looks like on a reference face
            ref = sf.sample_identity(424242)
            rows.append([None] + sum([[None, None, render_target(ref, t, self.label_names, x.shape[-1]), None]
                                      for t in targets.cpu()], []))
        xs = vis.to_uint8(x)
        for i in range(x.shape[0]):
            row = [xs[i]]
            for attn, color, y, rec in outs:
                row += [vis.to_uint8(attn[i]), vis.to_uint8(color[i]), vis.to_uint8(y[i]), vis.to_uint8(rec[i])]
            rows.append(row)
        img = vis.grid(rows)
        header = vis.label_row(['input'] + sum([[f'A {t}', 'colour', 'output', 'rec'] for t in titles], []),
                                 x.shape[-1])
        img = vis.stack([header, img])
        path = vis.save_png(img, os.path.join(self.dirs['samples'], f'{it:08d}-samples.png'))
        if self.writer is not None:
            self.writer.add_image('samples', img, it, dataformats='HWC')
        return path

    # ----------------------------------------------------------------- checkpoints
    def state(self, it):
        modules = {name: module.state_dict() for name, module in self.saved_modules()}
        return {**modules, 'g_optim': self.g_optim.state_dict(), 'd_optim': self.d_optim.state_dict(),
                'iteration': it, 'config': config_dict(self.cfg), 'label_names': self.label_names,
                'rng': checkpoint.rng_state(), 'format': 1}

    def save_checkpoint(self, it):
        """Rank 0 writes; with several ranks, every rank's weight fingerprint goes in too
        (`rank_fingerprints`), and ranks out of step are reported."""
        path = checkpoint.path_for(self.dirs['models'], it)
        if self.world > 1:
            mine, everyone = distributed.fingerprint(m for _, m in self.saved_modules())
            if self.is_main and len(set(everyone)) > 1:
                tqdm.write(f'warning: iteration {it}: the ranks\' weights differ '
                           f'(ranks {[r for r, f in enumerate(everyone) if f != mine]} differ from rank 0)')
        if self.is_main:
            state = self.state(it)
            if self.world > 1:
                state['rank_fingerprints'] = everyone
            checkpoint.save(state, path, keep=self.cfg.keep_checkpoints)
        if self.nonfinite_in_a_row == 0:
            self.last_good_checkpoint = path
        return path

    def start_from(self, path):
        """--init_from: the weights of a released generator (and its critic, when one lies beside it; the
        GANmut emotion space) or of a checkpoint of this code; the optimisers start fresh. A resumed run
        then overwrites them with its own checkpoint's."""
        trained = Trained.newest(path)
        loaded = []
        for key, module in self.saved_modules():
            source = 'G' if key == 'G_ema' else key
            if source in trained.ckpt:
                trained.load(source, module)
                loaded.append(key)
        if self.is_main:
            print(f'--init_from {trained.path}: {", ".join(loaded)} from '
                  f'{trained.released or "a checkpoint of this code"}; fresh optimisers')

    def saved_modules(self):
        """(checkpoint key, module) of what a checkpoint restores besides the optimisers."""
        return (('G', self.G), ('D', self.D)) + ((('G_ema', self.G_ema),) if self.G_ema is not None else ())

    @property
    def G_eval(self):
        """The generator for samples and evaluation: the weight average when there is one."""
        return self.G_ema if self.G_ema is not None else self.G

    def check_checkpoint(self, ckpt, path):
        check_compatible(ckpt, self.cfg, self.label_names, path)

    def restore(self, which):
        path, ckpt = checkpoint.load_newest(self.dirs['models'], which)
        self.check_checkpoint(ckpt, path)
        for name, module in self.saved_modules():
            if name == 'G_ema' and name not in ckpt:   # --g_ema_beta added on resume: start the average here
                ckpt[name] = ckpt['G']
            checkpoint.check_state_dict(module, ckpt[name], name, path)
            module.load_state_dict(ckpt[name])
        self.g_optim.load_state_dict(ckpt['g_optim'])
        self.d_optim.load_state_dict(ckpt['d_optim'])
        checkpoint.set_rng_state(ckpt['rng'])
        self.start_iter = int(ckpt['iteration'])
        self.last_good_checkpoint = path
        tqdm.write(f'resumed from {path} (iteration {self.start_iter})')
        return path


class StopSignals:
    """While active, SIGINT and SIGTERM only set `signum`; the training loop finishes the
    iteration, saves a checkpoint and stops (`then`: what the message says happens next). A second
    signal stops at once."""

    def __init__(self, then='saving a checkpoint after this iteration'):
        self.then = then

    def __enter__(self):
        self.signum, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self.handle)
        return self

    def handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        tqdm.write(f'{signal.Signals(signum).name} received: {self.then} (send it again to stop at once)')

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False


def adv_loss(cfg):
    return getattr(cfg, 'adv_loss', 'wgan-gp')


def generator_au_weight(cfg, it):
    """--lambda_cls, or with --lambda_cls_end >= 0 a linear ramp from it to that value over the run."""
    end = getattr(cfg, 'lambda_cls_end', -1.0)
    if end is None or end < 0:
        return cfg.lambda_cls
    frac = min(max(it / max(cfg.num_iters - 1, 1), 0.0), 1.0)
    return cfg.lambda_cls + (end - cfg.lambda_cls) * frac


# Logs in a row with an extreme mean mask before the warning: a run often copies its input for its
# first hundred or two iterations before the edits start (the 32 px demo: iterations ~100 to ~230).
MASK_WARN_LOGS = 20


def mask_extreme(attn_mean):
    """What a mean attention mask near 0 or 1 means, or None. Local edits keep most pixels: the
    demo's working masks average 0.98 (edits on brows, eyes and mouth), the copying runs of
    docs/notebook.md 0.993-1.000, hence 0.99."""
    if attn_mean > 0.99:
        return 'near 1: the generator copies its input (try a larger --lambda_sat)'
    if attn_mean < 0.01:
        return 'near 0: the generator repaints the whole face (try a smaller --lambda_sat or larger --lambda_smooth)'
    return None


# The config entries that decide the shapes of the networks (or, as --g_warp and --g_condition, what a
# layer computes).
SHAPE_KEYS = ('image_size', 'g_conv_dim', 'd_conv_dim', 'g_repeat_num', 'd_repeat_num', 'g_upsample', 'g_warp',
              'g_condition', 'd_local_head')


def check_compatible(ckpt, cfg, label_names, path):
    """Refuse to resume from a checkpoint of another network, conditions or removed option, naming them."""
    saved = ckpt.get('config', {})
    check_removed_options(saved, path, resuming=True)
    problems = [f'--{k}: checkpoint {saved[k]}, now {getattr(cfg, k)}'
                for k in SHAPE_KEYS if k in saved and saved[k] != getattr(cfg, k)]
    if 'label_names' in ckpt and list(ckpt['label_names']) != list(label_names):
        problems.append(f'conditions (--aus / c_dim): checkpoint {" ".join(ckpt["label_names"])}, '
                        f'now {" ".join(label_names)}')
    if problems:
        raise CheckpointError(f'{path} was made for another configuration:\n  ' + '\n  '.join(problems))


EMOTION_TARGETS = ['happy', 'surprise', 'sad', 'disgust', 'anger', 'fear']


def fixed_targets(label_names, labels, num, seed):
    """Target conditions for the sample grids: emotion prototypes when the labels are
    standard AUs (readable at a glance), else rows of the label table."""
    names = list(label_names)
    if all(n in sf.AU_INDEX for n in names):
        cols = [sf.AU_INDEX[n] for n in names]
        vecs, titles = [], []
        for emo in EMOTION_TARGETS:
            v = torch.tensor(sf.emotion_prototype(emo, 4.5)[cols] / 5.0, dtype=torch.float32)
            if v.sum() > 0:
                vecs.append(v)
                titles.append(emo)
            if len(vecs) == num:
                return torch.stack(vecs), titles
    g = torch.Generator().manual_seed(seed)
    strong = labels[labels.sum(1) >= labels.sum(1).median()]
    idx = torch.randperm(strong.shape[0], generator=g)[:num]
    return strong[idx].float(), [f'row{int(i)}' for i in idx]


def render_target(identity, target01, label_names, size):
    aus = np.zeros(sf.NUM_AUS)
    for v, name in zip(target01.tolist(), label_names):
        aus[sf.AU_INDEX[name]] = v * 5
    return sf.render(identity, aus, size)


def train(cfg, solver_class=Solver, probe=None):
    """Train the model of `solver_class` (Solver: GANimation; ganmut.solver.GANmutSolver) on the data its
    `datasets` finds. `probe(cfg, solver, pairs)`: what scores the model every --eval_step (evaluation's
    TrainingProbe, handed in by main.py, which chooses between the models)."""
    with distributed.local_main_first(), STAGES.timed('data'):   # one process per node writes the data
        what, train_set, sample_set = solver_class.datasets(cfg)
    if cfg.train_minutes:
        with STAGES.timed('speed check'):
            plan_iterations(cfg, solver_class, train_set)
    solver = solver_class(cfg, train_set, sample_set)
    if cfg.eval_step and solver.is_main and probe is not None:
        solver.eval_hook = probe(cfg, solver, cfg.eval_step_pairs)
    solver.describe(what)
    if solver.is_main:
        write_config(cfg)
    t0 = time.time()
    with STAGES.timed('training'):
        solver.train()
    print(f'training done in {duration(time.time() - t0)}; checkpoints in {solver.dirs["models"]}, '
          f'samples in {solver.dirs["samples"]}')
    return solver


def synchronize(device):
    """Wait for the device's queued work (a timer's end must see it done)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class TrainingPath:
    """This code's training iterations on one configuration, on a solver of their own, run `n` at a time
    (run() returns seconds): the bench's paths take turns, and --train_minutes times its copy of the run."""

    def __init__(self, cfg, train_set, iterations, solver_class=Solver):
        run_cfg = copy.copy(cfg)
        run_cfg.planned_iters = cfg.num_iters   # --compile auto decides by the run benchmarked, not this short one
        run_cfg.num_iters = iterations
        run_cfg.num_iters_decay = 0
        self.solver = solver_class(run_cfg, train_set)
        self.device = self.solver.device
        self.batches = self.solver.batches(0)
        self.it = 0

    def run(self, n):
        t0 = time.perf_counter()
        for _ in range(n):
            x, aus = next(self.batches)   # loading is part of what is timed
            self.solver.train_step(self.it, x, aus)
            self.it += 1
        synchronize(self.device)
        return time.perf_counter() - t0


# What --train_minutes leaves for what the training loop does besides iterating (sample grids,
# checkpoints, the --eval_step scores) and for the speed check's error: the demo's 5 minutes took
# 5 min 21 s with 5% on the fp32 Xeon (the run's iterations 7% slower than the check's).
BUDGET_EXTRAS = 0.10
SPEED_CHECK = (3, 6)   # --train_minutes: untimed, then timed iterations of the speed check


def plan_iterations(cfg, solver_class, train_set):
    """--train_minutes: sets --num_iters (and --num_iters_decay, keeping its share of the run) from the
    speed of a few iterations of a throwaway copy of the run, measured here first, so that the run
    itself is the one `--num_iters N` would make. A resumed run keeps the count it was planned with."""
    models = run_folder(cfg, 'models')
    resume = str(cfg.resume_iters or '').lower()
    if resume not in ('', 'none') and checkpoint.list_checkpoints(models):
        saved = checkpoint.load_newest(models, 'latest' if resume == 'auto' else resume)[1].get('config', {})
        cfg.num_iters, cfg.num_iters_decay = saved['num_iters'], saved['num_iters_decay']
        print(f'--train_minutes: resuming a run planned for {cfg.num_iters} iterations')
        return
    warm, timed = SPEED_CHECK
    path = TrainingPath(cfg, train_set, warm + timed, solver_class)
    path.run(warm)
    seconds = path.run(timed) / timed
    del path
    share = min(cfg.num_iters_decay, cfg.num_iters) / cfg.num_iters
    iters = max(1, int(cfg.train_minutes * 60 * (1 - BUDGET_EXTRAS) / seconds))
    iters = -distributed.any_rank(-iters)        # the slowest rank's count, so that all ranks agree
    cfg.num_iters, cfg.num_iters_decay = iters, round(iters * share)
    if distributed.STATE.rank == 0:
        print(f'--train_minutes {cfg.train_minutes:g}: {seconds * 1000:.0f} ms per iteration measured here, '
              f'{1 - BUDGET_EXTRAS:.0%} of the minutes for iterations -> {iters} iterations '
              f'(--num_iters {iters} --num_iters_decay {cfg.num_iters_decay} repeats this run)')
