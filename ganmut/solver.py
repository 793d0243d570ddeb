"""Training of GANmut: the GANimation Solver with a learned emotion space.

    python main.py --model ganmut --parametrization linear      # or gaussian; --emotion_dim 3
    python main.py --model ganmut --dataset_root dataset --imgs_folder imgs   # the original GANmut layout

The generator is conditioned on a code z (2-D, optionally 3-D) instead of AUs;
the space that maps emotions to codes (`ganmut.LinearSpace` / `GaussianSpace`)
is an nn.Module optimised with G by the generator's Adam and saved in the
checkpoint under 'space'. The critic has three heads: patch scores, c_dim
emotion logits and the code regression. Everything else comes from
`solver.Solver`: the uint8 batch cache, the per-iteration seeded RNG (batch
order, flips, target emotions and strengths, random codes, GP points), the
learning-rate decay, bf16 autocast, checkpoints, logging and the loop; a resumed
run repeats what the uninterrupted run would have done.

Samples every --sample_step: `<it>-samples.png` (for each emotion a row of faces
at increasing strength), `<it>-plane.png` (faces on a grid of codes over
[-1, 1]^2 beside the plane with the learned axes / gaussian ellipses) and
`<it>-space.txt` (the axes or means in the units of test-mode editing).
"""
import math
import os

import numpy as np
import torch

import data_loader as dl
import synthetic_faces as sf
from ganmut import losses as ganmut_losses
from ganmut import plots as gv
from ganmut import space as ganmut
from model import Discriminator, Generator, critic_options, generator_options
from solver import Solver, images_to_float, make_adam, random_flip
from utils import distributed
from utils import visualize as vis
from utils.errors import CheckpointError, FlagError
from utils.fast_conv import use_matmul_for_small_convs
from utils.runtime import explicit_gp_on, resolve_flag, small_conv_matmul_on

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)   # the columns of the sample grid
PLANE_GRID = 9                            # codes per side of the plane map


# --------------------------------------------------------------------------- data

def held_out_csv(csv_path):
    """test.csv beside the training CSV (the synthetic data's held-out identities), or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(csv_path)), 'test.csv')
    return path if os.path.exists(path) and os.path.abspath(path) != os.path.abspath(csv_path) else None


def emotion_set(image_dir, csv_path, image_size, c_dim):
    """dl.emotion_dataset with the emotion names as label_names."""
    ds = dl.emotion_dataset(image_dir, csv_path, image_size, c_dim)
    ds.label_names = ganmut.emotion_names(c_dim)
    return ds


def class_counts(labels, c_dim):
    return np.bincount(np.asarray(labels), minlength=c_dim)[:c_dim]


FEW_SHARE = 0.01     # an emotion on fewer than 1% of the training images is reported as rare


def rare_emotions_note(names, counts, repeat_threshold):
    """A line naming the emotions with a few training images (under FEW_SHARE of the set, none excepted:
    those get their own warning), or None: real photos are mostly neutral faces and smiles, and the
    critic's classifier, which teaches the generator each emotion, sees a rare one in few batches."""
    total = counts.sum()
    rare = [f'{n} ({c}, {100 * c / total:.1f}%)' for n, c in zip(names, counts) if 0 < c < FEW_SHARE * total]
    if not rare:
        return None
    how = (f'--repeat_threshold {repeat_threshold} draws them more often' if repeat_threshold
           else '--repeat_threshold 0.1 would draw them more often')
    return f'note: few training images of {", ".join(rare)}: {how}'


# --------------------------------------------------------------------------- the solver

class GANmutSolver(Solver):
    @staticmethod
    def datasets(cfg):
        """(what the data is, training set, sample set): the emotion data of the flags
        (data_loader.resolve_data) and its held-out faces for the samples, when there are some."""
        what = dl.resolve_data(cfg, 'emotion')
        train_set = dl.prepare_training_set(emotion_set(cfg.image_dir, cfg.attr_path, cfg.image_size, cfg.c_dim),
                                            resolve_flag(cfg.data_cache, True))
        test_csv = held_out_csv(cfg.attr_path)
        sample_set = None
        if test_csv:
            try:
                sample_set = emotion_set(cfg.image_dir, test_csv, cfg.image_size, cfg.c_dim)
            except dl.DataError:
                sample_set = None
        return what, train_set, sample_set

    def describe(self, what):
        """The start-up lines: the data with its count per emotion, the space and the device settings."""
        cfg = self.cfg
        counts = class_counts(self.train_set.labels.numpy(), cfg.c_dim)
        print(f'dataset: {what}: {len(self.train_set)} training images; per emotion: '
              + ', '.join(f'{n} {c}' for n, c in zip(self.label_names, counts)))
        note = rare_emotions_note(self.label_names, counts, cfg.repeat_threshold)
        if note:
            print(note)
        if (counts == 0).any():
            print('warning: no training image of ' + ', '.join(n for n, c in zip(self.label_names, counts) if c == 0)
                  + f' (rows with expression < --c_dim {cfg.c_dim} are used)')
        print(f'GANmut: {cfg.parametrization} {cfg.emotion_dim}-D space, '
              f'{"attention" if self.attention else "plain"} generator, regulariser {cfg.regularization_type}, '
              f'{cfg.cycle_loss} cycle; device {self.device}, bf16 autocast: {self.amp_dtype is not None}')

    def train(self):
        """Solver.train, then the learned space in the units of test-mode editing."""
        done = super().train()
        if self.is_main:
            print('\n'.join(describe(self.space)))
        return done

    def build_networks(self):
        """GANmut's G (conditioned on the code), its three-headed critic, the emotion space
        (optimised with G) and the optimisers."""
        cfg = self.cfg
        if cfg.emotion_dim < 2:
            raise FlagError(f'--emotion_dim must be 2 or more, got {cfg.emotion_dim}')
        if cfg.parametrization not in ganmut.PARAMETRIZATIONS:
            raise FlagError(f'--parametrization must be linear or gaussian, got {cfg.parametrization}')
        if cfg.regularization_type not in ('gp', 'r1'):
            raise FlagError(f'--regularization_type must be gp or R1, got {cfg.regularization_type}')
        self.linear = cfg.parametrization == 'linear'
        self.attention = resolve_flag(cfg.attention, True)
        self.G = Generator(cfg.g_conv_dim, cfg.emotion_dim, cfg.g_repeat_num, attention=self.attention,
                           **generator_options(vars(cfg))).to(self.device, memory_format=self.memory_format)
        self.D = Discriminator(cfg.image_size, cfg.d_conv_dim, self.c_dim, cfg.d_repeat_num, code_dim=cfg.emotion_dim,
                               **critic_options(vars(cfg))).to(
            self.device, memory_format=self.memory_format)
        self.space = ganmut.make_space(cfg.parametrization, self.c_dim, cfg.emotion_dim, neutral_index=0,
                                       names=self.label_names).to(self.device)
        use_matmul_for_small_convs(self.D, small_conv_matmul_on(cfg, self.device))
        if getattr(cfg, 'compile', 'auto') == 'true':
            raise FlagError('--compile true: GANmut\'s generator runs eagerly in this code (use auto or false)')
        self.G_train, self.G_ema = self.G, None   # no compile, no weight average for GANmut yet
        self.g_optim = make_adam(list(self.G.parameters()) + list(self.space.parameters()), cfg.g_lr, cfg,
                                 self.device)
        self.d_optim = make_adam(self.D.parameters(), cfg.d_lr, cfg, self.device)

    # ----------------------------------------------------------------- one iteration

    def sample_targets(self, batch_size, gen):
        """Training codes: linear: uniform target emotions, LinearSpace.sample (strengths,
        noise, the first n_r codes random directions); gaussian: the means, then uniform codes."""
        n = batch_size * distributed.STATE.world   # drawn for the global batch; this rank's rows
        if self.linear:
            e_t = torch.randint(0, self.c_dim, (n,), generator=gen, device=gen.device).to(self.device)
            return distributed.rows(self.space.sample(e_t, gen, n_random=self.cfg.n_r))
        return distributed.rows(self.space.sample(n, gen))

    def train_step(self, it, x_real, labels):
        cfg = self.cfg
        gen = self.iteration_generator(it)
        self.set_learning_rates(it)
        x_real = random_flip(x_real, gen)
        e_org = labels.long()
        g_step = (it + 1) % cfg.n_critic == 0
        # codes and fakes once: with the graph (to G and the space) when G is updated in this iteration
        with torch.set_grad_enabled(g_step):
            target = self.sample_targets(x_real.shape[0], gen)
            with self.autocast():
                x_fake, attn_fake, _ = self.G(x_real, target['code'])
        record, real_out = self.critic_step(x_real, e_org, x_fake.detach(), target['code'].detach(), gen)
        if g_step:
            record.update(self.generator_step(x_real, e_org, target, x_fake, attn_fake, real_out))
        return record

    def critic_step(self, x_real, e_org, x_fake, z, gen):
        """The critic's loss (ganmut.space.linear_critic_loss / gaussian_critic_loss) from one critic pass
        over real, fake (and interpolated, for gp) images. Returns the record and the critic's (detached)
        logits and code regression of the real images, which the generator step uses for its cycle code."""
        cfg = self.cfg
        self.D.requires_grad_(True)
        self.d_optim.zero_grad(set_to_none=True)
        r1 = cfg.regularization_type == 'r1'
        p = self.critic_pass(x_real, x_fake, gen, r1, not r1 and explicit_gp_on(cfg, self.device))
        critic_loss, lambda_code = ((ganmut_losses.linear_critic_loss, cfg.lambda_d_info) if self.linear
                                    else (ganmut_losses.gaussian_critic_loss, cfg.lambda_expr))
        loss, record = critic_loss(p.real[0], p.fake[0], p.real[1], e_org, p.fake[2], z, p.reg, cfg.lambda_cls,
                                   cfg.lambda_reg, lambda_code)
        self.apply_step(loss, self.d_optim, record)
        return record, (p.real[1].detach(), p.real[2].detach())

    def generator_step(self, x_real, e_org, target, x_fake, attn_fake, real_out):
        cfg = self.cfg
        logits_real, code_real = real_out
        self.D.requires_grad_(False)
        self.g_optim.zero_grad(set_to_none=True)
        with self.autocast():
            out_src, out_cls, out_code = self.D(x_fake)
            if cfg.cycle_loss == 'approximate':
                z_org = ganmut_losses.cycle_code_approximate(self.space, e_org, logits_real)
            else:
                z_org = ganmut_losses.cycle_code_original(code_real)
            x_rec, attn_rec, _ = self.G(x_fake, z_org)
        masks = [attn_fake, attn_rec] if self.attention else ()
        if self.linear:
            if not resolve_flag(getattr(cfg, 'info_moves_space', 'false'), False):
                target = dict(target, code=target['code'].detach())   # only the info term reads target['code']
            loss, record = ganmut_losses.linear_generator_loss(
                out_src, out_cls, out_code, target, x_real, x_rec, cfg.lambda_cls, cfg.lambda_g_strength,
                cfg.lambda_g_info, cfg.lambda_rec, self.space.neutral_index, masks, cfg.lambda_sat, cfg.lambda_smooth)
        else:
            log_p = self.space.target_log_distribution(target['code'])
            loss, record = ganmut_losses.gaussian_generator_loss(
                out_src, out_cls, log_p, target['emotion'], x_real, x_rec, cfg.lambda_cls, cfg.lambda_prediction,
                cfg.lambda_rec, masks, cfg.lambda_sat, cfg.lambda_smooth)
        self.apply_step(loss, self.g_optim, record)
        if self.attention:
            record['G/attn_mean'] = attn_fake.detach().float().mean()
        return record

    # ----------------------------------------------------------------- logging
    @staticmethod
    def postfix(m):
        keys = [('D/loss', 'D'), ('D/acc', 'acc'), ('G/loss', 'G'), ('G/cls', 'cls'), ('G/kl', 'kl'),
                ('G/rec', 'rec'), ('G/attn_mean', 'attn')]
        return ' '.join(f'{short}={m[k]:.3f}' for k, short in keys if k in m)

    def log(self, it, means):
        super().log(it, means)   # every loss term, learning rates, the attention warning
        for k, v in space_scalars(self.space).items():
            self.writer.add_scalar(k, v, it)

    # ----------------------------------------------------------------- samples
    def fixed_samples(self, n=2):
        """Held-out faces: a neutral one first when there is one, then non-neutral ones."""
        labels = self.sample_set.labels.tolist()
        neutral = [i for i, e in enumerate(labels) if e == 0][:1]
        others = [i for i, e in enumerate(labels) if e != 0][:n - len(neutral)]
        idx = (neutral + others) or list(range(min(n, len(self.sample_set))))
        _, images = dl.load_readable(self.sample_set, idx)
        x = torch.from_numpy(np.stack(images))
        return images_to_float(x, self.device, self.memory_format)

    @torch.no_grad()
    def save_samples(self, it, x):
        self.G.eval()   # no effect on the layers (IN uses per-image statistics); for clarity
        with self.autocast():
            strength, plane = sample_pictures(self.G, self.space, x, self.label_names,
                                              reference=self.cfg.dataset_kind == 'synthetic',
                                              title=f'{self.cfg.parametrization} space, iteration {it}')
        self.G.train()
        path = vis.save_png(strength, os.path.join(self.dirs['samples'], f'{it:08d}-samples.png'))
        vis.save_png(plane, os.path.join(self.dirs['samples'], f'{it:08d}-plane.png'))
        lines = describe(self.space)
        with open(os.path.join(self.dirs['samples'], f'{it:08d}-space.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
        if self.writer is not None:
            self.writer.add_image('samples', strength, it, dataformats='HWC')
            self.writer.add_image('plane', plane, it, dataformats='HWC')
            self.writer.add_text('space', '    ' + '\n    '.join(lines), it)
        return path

    # ----------------------------------------------------------------- checkpoints
    def state(self, it):
        return dict(super().state(it), model='ganmut')   # the space is in saved_modules

    def saved_modules(self):
        return super().saved_modules() + (('space', self.space),)

    def check_checkpoint(self, ckpt, path):
        super().check_checkpoint(ckpt, path)
        check_ganmut_config(ckpt.get('config', {}), self.cfg, path)


def check_ganmut_config(saved, cfg, path):
    """Refuse a checkpoint of another model, space or generator kind, naming the mismatch."""
    problems = []
    if saved.get('model', 'ganimation') != 'ganmut':
        problems.append(f'--model: checkpoint {saved.get("model", "ganimation")}, now ganmut')
    for k in ('parametrization', 'emotion_dim'):
        if k in saved and saved[k] != getattr(cfg, k):
            problems.append(f'--{k}: checkpoint {saved[k]}, now {getattr(cfg, k)}')
    if 'attention' in saved and resolve_flag(saved['attention'], True) != resolve_flag(cfg.attention, True):
        problems.append(f'--attention: checkpoint {saved["attention"]}, now {cfg.attention}')
    if problems:
        raise CheckpointError(f'{path} was made for another configuration:\n  ' + '\n  '.join(problems))


# --------------------------------------------------------------------------- shared with test and eval

def describe(space):
    """The learned axes or means with emotion names, in the units of test-mode editing."""
    if space.dim == 2:
        how = ('linear space: edit with --theta T --rho R, or --emotion NAME --intensity F'
               if isinstance(space, ganmut.LinearSpace) else
               'gaussian space: edit with --x X --y Y (the mean is the emotion at full intensity), '
               'or --emotion NAME --intensity F')
    else:
        how = f'{space.dim}-D {"linear" if isinstance(space, ganmut.LinearSpace) else "gaussian"} space: ' \
              f'edit with --x X --y Y --z Z, or --emotion NAME --intensity F'
    return [how] + ['  ' + line for line in space.describe()]


@torch.no_grad()
def space_scalars(space):
    """TensorBoard scalars of the space: axis angles (linear) or means and covariances (gaussian)."""
    out = {}
    comp = ['x', 'y', 'z'] if space.dim <= 3 else [f'z{j}' for j in range(space.dim)]
    if isinstance(space, ganmut.LinearSpace):
        axes = space.axes().float().cpu()
        for i, name in enumerate(space.names):
            if i == space.neutral_index:
                continue
            if space.dim == 2:
                out[f'space/theta_deg/{name}'] = math.degrees(math.atan2(float(axes[i, 1]), float(axes[i, 0]))) % 360
            else:
                for j in range(space.dim):
                    out[f'space/axis_{comp[j]}/{name}'] = float(axes[i, j])
    else:
        means, covs = space.means().float().cpu(), space.covariances().float().cpu()
        for i, name in enumerate(space.names):
            for j in range(space.dim):
                out[f'space/mean_{comp[j]}/{name}'] = float(means[i, j])
                for k in range(j, space.dim):
                    out[f'space/cov_{comp[j]}{comp[k]}/{name}'] = float(covs[i, j, k])
    return out


@torch.no_grad()
def run_codes(G, x, codes, batch_size=64):
    """One face x (3, H, W) through G at each code (T, dim) -> (T, H, W, 3) uint8 outputs and masks (or None)."""
    outs, masks = [], []
    dev = next(G.parameters()).device
    for s in range(0, codes.shape[0], batch_size):
        c = codes[s:s + batch_size].to(dev)
        y, attn, _ = G(x.unsqueeze(0).expand(c.shape[0], -1, -1, -1), c)
        outs.append(vis.to_uint8(y))
        masks.append(vis.to_uint8(attn * 2 - 1) if attn is not None else None)
    return np.concatenate(outs), (np.concatenate(masks) if masks[0] is not None else None)


def reference_faces(names, size, seed=424242, strength=0.9):
    """Each emotion's prototype on a reference synthetic face (None for unknown names)."""
    ident = sf.sample_identity(seed)
    return [sf.render(ident, sf.emotion_prototype(n, strength * 5.0), size) if n in sf.EMOTION_PROTOTYPES
            else np.full((size, size, 3), 255, np.uint8) for n in names]


@torch.no_grad()
def sample_pictures(G, space, x, names, reference=False, title='', strengths=STRENGTHS, grid_n=PLANE_GRID):
    """(strength grid, plane map) uint8 images for faces x (B, 3, H, W); run under autocast by the caller."""
    dev = x.device
    e = torch.arange(len(names), device=dev).repeat_interleave(len(strengths))
    s = torch.tensor(strengths, device=dev, dtype=torch.float32).repeat(len(names))
    codes = space.emotion_code(e, s).float()
    inputs, outputs, masks = [], [], []
    last = len(strengths) - 1
    for xi in x:
        y, m = run_codes(G, xi, codes)
        inputs.append(vis.to_uint8(xi))
        outputs.append(y.reshape(len(names), len(strengths), *y.shape[1:]))
        masks.append(m.reshape(len(names), len(strengths), *m.shape[1:])[:, last] if m is not None else None)
    refs = reference_faces(names, x.shape[-1]) if reference else None
    strength = gv.strength_grid(inputs, outputs, masks, names, strengths, refs)
    faces, _ = run_codes(G, x[0], gv.plane_codes(grid_n, space.dim))
    plane = gv.plane_map(faces, grid_n, space, title)
    return strength, plane
