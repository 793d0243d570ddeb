"""Networks: the attention generator and the PatchGAN critic.

Instance norm never keeps running statistics, so every image is normalised with
its own statistics in training *and* at test time (models released with stored
statistics and run in eval mode produced ruined faces).
"""
import math
import os

import torch
import torch.nn as nn

import released
from synthetic_faces import AU_NAMES
from utils import checkpoint
from utils.errors import CheckpointError, FlagError
from utils.fast_conv import SmallOutputConv2d, conv_input_grad
from utils.runtime import resolve_amp, resolve_flag


def _norm(ch, affine=True):
    return nn.InstanceNorm2d(ch, affine=affine, track_running_stats=False)


class ResidualBlock(nn.Module):
    def __init__(self, ch, bias=False, affine=True):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1, bias=bias), _norm(ch, affine), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=bias), _norm(ch, affine))

    def forward(self, x):
        return x + self.body(x)


class Generator(nn.Module):
    """Image + condition tiled over it -> encoder / residual blocks / decoder.

    With `attention` (GANimation) there are two heads: colour C (tanh) and
    attention A (sigmoid), and the output is y = A * x + (1 - A) * C: where A is
    near 1 the input pixel is kept. Without it (the released GANmut generator)
    the tanh head is the output. forward() returns (y, A, C); A is None without
    attention.

    `warp=k` (an option, not the paper's; k > 0): a third, zero-initialised head predicts a
    flow field in pixels, one vector per k x k cell, bilinearly upsampled; the input is
    resampled along it before the mask blends, y = A * warp(x) + (1 - A) * C. Moving
    pixels is how an expression changes a face (a mouth corner goes up, a brow goes
    down); a colour head must paint the moved feature and erase the old one instead.
    The generator still starts as the identity (zero flow).

    `condition='relative'` (an option, not the paper's): the condition tiled over the image is
    [target, target - source] (2 * c_dim channels), and forward() needs the source's AUs
    `c_src`. Where an AU does not change its difference is 0, so the generator is told what
    to leave alone instead of having to read the source's AUs from its pixels first
    (relative attributes, as in RelGAN, Wu et al. 2019).

    The variants of released generators (released.py): `conv_bias` (biases on the body's
    convolutions, not the heads'), `norm_affine=False` (instance norm without scale and shift), and
    `channels='bgr'` (a model trained on BGR images: forward() still takes and returns RGB).
    """

    def __init__(self, conv_dim=64, c_dim=17, repeat_num=6, attention=True, upsample='transposed', warp=0,
                 condition='target', conv_bias=False, norm_affine=True, channels='rgb'):
        super().__init__()
        if channels not in ('rgb', 'bgr'):
            raise ValueError(f'channels must be rgb or bgr, got {channels!r}')
        if upsample not in ('transposed', 'resize'):
            raise FlagError(f'--g_upsample must be transposed or resize, got {upsample!r}')
        if warp < 0 or (warp and not attention):
            raise FlagError(f'--g_warp must be 0 (off) or a flow cell size >= 1 with the attention generator, '
                             f'got {warp}{"" if attention else " without attention"}')
        if condition not in ('target', 'relative'):
            raise FlagError(f'--g_condition must be target or relative, got {condition!r}')
        self.c_dim, self.attention, self.bgr = c_dim, attention, channels == 'bgr'
        self.warp_cell, self.relative = warp, condition == 'relative'
        cond_channels = c_dim * (2 if self.relative else 1)
        bias, affine = conv_bias, norm_affine
        layers = [nn.Conv2d(3 + cond_channels, conv_dim, 7, 1, 3, bias=bias), _norm(conv_dim, affine),
                  nn.ReLU(inplace=True)]
        ch = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=bias), _norm(ch * 2, affine), nn.ReLU(inplace=True)]
            ch *= 2
        layers += [ResidualBlock(ch, bias, affine) for _ in range(repeat_num)]
        for _ in range(2):
            if upsample == 'transposed':   # the paper's decoder
                up = [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=bias)]
            else:   # nearest-neighbour resize, then a conv: no checkerboard pattern (Odena et al., 2016)
                up = [nn.Upsample(scale_factor=2, mode='nearest'), nn.Conv2d(ch, ch // 2, 3, 1, 1, bias=bias)]
            layers += up + [_norm(ch // 2, affine), nn.ReLU(inplace=True)]
            ch //= 2
        self.main = nn.Sequential(*layers)
        self.color = nn.Sequential(nn.Conv2d(ch, 3, 7, 1, 3, bias=False), nn.Tanh())
        self.attn = nn.Sequential(nn.Conv2d(ch, 1, 7, 1, 3, bias=False), nn.Sigmoid()) if attention else None
        self.flow = nn.Conv2d(ch, 2, 7, 1, 3, bias=False) if warp else None
        init_weights(self)
        if self.flow is not None:
            nn.init.zeros_(self.flow.weight)

    def forward(self, x, c, c_src=None):
        """x: (B, 3, H, W) in [-1, 1]; c: (B, c_dim) target AUs in [0, 1]; c_src: the source
        image's AUs, used with condition='relative' only."""
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f'the generator needs image sides divisible by 4, got {tuple(x.shape[-2:])}')
        if self.relative:
            if c_src is None:
                raise ValueError('a generator with --g_condition relative needs the source image\'s AUs')
            c = torch.cat([c, c - c_src], 1)
        if self.bgr:
            x = x.flip(1)
        c_map = c.to(x.dtype).view(c.shape[0], c.shape[1], 1, 1).expand(-1, -1, x.shape[2], x.shape[3])
        h = self.main(torch.cat([x, c_map], dim=1))
        color, attn, flow = self.heads(h)
        if self.attn is None:
            return (color.flip(1), None, color.flip(1)) if self.bgr else (color, None, color)
        if self.flow is not None:
            x = warp_image(x, smooth_flow(flow, self.warp_cell))
        y = attn * x + (1 - attn) * color
        return (y.flip(1), attn, color.flip(1)) if self.bgr else (y, attn, color)

    def heads(self, h):
        """(colour C, attention A or None, flow or None) from the decoder's features. The heads are
        7x7 convolutions with 3, 1 and 2 output channels, which the CPU's convolution kernels run at a
        few percent of their speed (they vectorise over output channels: 8 or 16 at a time); their
        weights are therefore put together into one convolution (up to 6 channels), which costs about
        what one head alone did (docs/benchmarks.md). Each head keeps its own weight and name."""
        convs = [m for m in (self.color[0], self.attn[0] if self.attn is not None else None, self.flow)
                 if m is not None]
        if len(convs) == 1:
            return self.color(h), None, None
        out = nn.functional.conv2d(h, torch.cat([c.weight for c in convs]), None, 1, 3)
        parts = out.split([c.out_channels for c in convs], 1)
        return (self.color[1](parts[0]), self.attn[1](parts[1]) if self.attn is not None else None,
                parts[-1] if self.flow is not None else None)


def smooth_flow(flow_px, cell):
    """One flow vector per cell x cell block (the block's mean), bilinearly upsampled: a flow
    that cannot scatter single pixels."""
    if cell == 1:
        return flow_px
    low = nn.functional.avg_pool2d(flow_px.float(), cell, ceil_mode=True)
    return nn.functional.interpolate(low, size=flow_px.shape[-2:], mode='bilinear', align_corners=False)


def warp_image(x, flow_px):
    """Resample x (B, C, H, W) at pixel + flow_px (B, 2, H, W; x then y offsets in pixels),
    bilinear, edges repeated. In fp32: bf16 grid coordinates would be off by a pixel or more."""
    H, W = x.shape[-2:]
    ys = torch.linspace(-1 + 1 / H, 1 - 1 / H, H, device=x.device)   # pixel centres, align_corners=False
    xs = torch.linspace(-1 + 1 / W, 1 - 1 / W, W, device=x.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
    px_to_grid = torch.tensor([2.0 / W, 2.0 / H], device=x.device)
    grid = torch.stack([grid_x, grid_y], -1) + flow_px.float().permute(0, 2, 3, 1) * px_to_grid
    with torch.autocast(x.device.type, enabled=False):
        return nn.functional.grid_sample(x.float(), grid, mode='bilinear', padding_mode='border',
                                         align_corners=False).to(x.dtype)


def generator_options(config):
    """The Generator's keyword options from a run's config (a dict: vars(cfg) or a checkpoint's
    'config'); configs saved before an option existed get its default."""
    return dict(upsample=config.get('g_upsample', 'transposed'),
                warp=config.get('g_warp', 0), condition=config.get('g_condition', 'target'),
                conv_bias=config.get('g_conv_bias', False), norm_affine=config.get('g_norm_affine', True),
                channels=config.get('g_channels', 'rgb'))


# Options removed after they were measured not to help (docs/notebook.md, "Removed options"): the value
# that every run without them had, and the last commit that had them. A checkpoint trained with another
# value is refused, naming the option and that commit: the architecture options everywhere (this code
# builds another network), the loss options when training resumes from it (it would train on without
# that term; its weights still load for test and eval modes).
LAST_COMMIT_WITH_REMOVED_OPTIONS = '671e618'
REMOVED_ARCHITECTURE = {'d_label_trunk': 'shared', 'g_color_head': 'tanh'}
REMOVED_LOSSES = {'au_noise': 0.0, 'au_blur': 0.0, 'au_adv_eps': 0.0, 'lambda_au_jac': 0.0, 'lambda_color_tv': 0.0,
                  'lambda_cls_d': -1.0}


def check_removed_options(config, path, resuming=False):
    """Refuse a checkpoint trained with an option this code no longer has (see REMOVED_ARCHITECTURE)."""
    removed = dict(REMOVED_ARCHITECTURE, **(REMOVED_LOSSES if resuming else {}))
    used = [f'--{k} {config[k]}' for k, off in removed.items() if not _was_off(k, config.get(k, off), off, config)]
    if used:
        raise CheckpointError(f'{path} was trained with {", ".join(used)}, removed from this code after it was '
                              f'measured not to help; the last commit that has it is '
                              f'{LAST_COMMIT_WITH_REMOVED_OPTIONS} (git checkout {LAST_COMMIT_WITH_REMOVED_OPTIONS})')


def _was_off(key, value, off, config):
    if key == 'lambda_cls_d':        # negative, or the AU weight itself: the critic's AU term as without it
        return value is None or value < 0 or value == config.get('lambda_cls')
    return value is None or value == off


def critic_options(config):
    """The Discriminator's keyword options from a run's config, as generator_options."""
    return dict(local_head=config.get('d_local_head', 0))


class Discriminator(nn.Module):
    """PatchGAN critic with extra heads.

    Returns (patch scores (B, 1, h, w), class / AU output (B, c_dim), code (B, code_dim) or None);
    with `local_head` the realism output is (B, 2, 1, 1), the two realism heads' mean scores.
    For GANimation `c_dim` heads regress the AUs; for GANmut they are emotion logits
    and `code_dim` outputs regress the 2-D (or 3-D) emotion code.
    """

    def __init__(self, image_size=128, conv_dim=64, c_dim=17, repeat_num=6, code_dim=0, local_head=0):
        super().__init__()
        check_critic(image_size, repeat_num, local_head)
        self.main, ch = _patch_trunk(conv_dim, repeat_num)
        k = image_size // 2 ** repeat_num
        self.src = SmallOutputConv2d(ch, 1, 3, 1, 1, bias=False)
        self.cls = SmallOutputConv2d(ch, c_dim, k, bias=False)
        self.code = SmallOutputConv2d(ch, code_dim, k, bias=False) if code_dim else None
        init_weights(self)
        # --d_local_head N: a second realism head, a 3x3 conv on the features of layer N (16 x 16 after
        # layer 2 at 64 px, ~18 px receptive field), so that the generator is also scored on local
        # texture; the last layer's 2x2 scores each see more than the whole face. Built after the
        # other layers' initialisation, so those start as without it.
        self.local_layers = local_head
        self.local = None
        if local_head:
            self.local = SmallOutputConv2d(conv_dim * 2 ** (local_head - 1), 1, 3, 1, 1, bias=False)
            nn.init.normal_(self.local.weight, 0.0, 0.02)

    def forward(self, x):
        if self.local is None:
            h = self.main(x)
        else:
            h_local = self.main[:2 * self.local_layers](x)     # (conv, LeakyReLU) per layer
            h = self.main[2 * self.local_layers:](h_local)
        out_cls = self.cls(h).flatten(1)
        out_code = self.code(h).flatten(1) if self.code is not None else None
        out_src = self.src(h)
        if self.local is not None:   # (B, 2, 1, 1): the two heads' mean scores, weighted equally
            out_src = torch.cat([out_src.float().mean((2, 3), keepdim=True),
                                 self.local(h_local).float().mean((2, 3), keepdim=True)], 1)
        return out_src, out_cls, out_code

    def realism_input_gradient(self, x):
        """d sum(out_src) / d x per image, written out as the backward pass it is, so that
        autograd can differentiate it with respect to the weights (the gradient penalty).

        The critic is convolutions and LeakyReLUs, so the input gradient is
        W_1^T S_1 W_2^T S_2 ... W_src^T 1, where W^T is the transposed convolution and
        S_i multiplies by 1 or the negative slope according to the sign of layer i's input
        in the forward pass on `x` (run without grad: S is piecewise constant in x, so
        it carries no gradient). Its gradient with respect to the weights then goes
        through ordinary first-order convolution kernels, instead of the double backward of
        autograd.grad(create_graph=True), which PyTorch computes on the CPU as
        convolutions with batch and channels swapped and kernels as large as the images.
        The same values as the double backward (to float rounding); the biases get no
        gradient from it, as from the double backward.
        """
        convs, acts, shapes = [], [], []
        h = x
        with torch.no_grad():
            for layer in self.main:
                if isinstance(layer, nn.Conv2d):
                    convs.append(layer)
                    shapes.append(h.shape)
                    h = layer(h)
                else:   # LeakyReLU: its output has the sign of its input, which is all S needs
                    h = layer(h)
                    acts.append((h, layer.negative_slope))
            out = self.src(h)
        # with --d_local_head the scores are the heads' means: d mean / d score = 1 / (number of scores)
        g = torch.ones_like(out) / (out[0, 0].numel() if self.local is not None else 1)
        g = conv_input_grad(self.src, g, h.shape)
        for i in reversed(range(len(convs))):
            act, slope = acts[i]
            # S: the LeakyReLU's own backward (differentiable in g), from its output
            g = torch.ops.aten.leaky_relu_backward(g, act.to(g.dtype), slope, True)
            g = conv_input_grad(convs[i], g, shapes[i])
            if self.local is not None and i == self.local_layers:   # g is now d / d (the local head's input)
                local_shape = (g.shape[0], 1) + tuple(g.shape[-2:])
                g = g + conv_input_grad(self.local, g.new_full(local_shape, 1 / g[0, 0].numel()), g.shape)
        return g


def _patch_trunk(conv_dim, repeat_num):
    """4x4 stride-2 convs with LeakyReLU(0.01), doubling the channels; returns (trunk, out channels)."""
    layers = [SmallOutputConv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01, inplace=True)]
    ch = conv_dim
    for _ in range(1, repeat_num):
        layers += [SmallOutputConv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(0.01, inplace=True)]
        ch *= 2
    return nn.Sequential(*layers), ch


def check_critic(image_size, d_repeat_num, d_local_head=0):
    """The critic's options fit together (main checks them before a run reads or writes anything)."""
    if image_size < 8 or image_size & (image_size - 1):
        raise FlagError(f'--image_size must be a power of two (32, 64, 128, ...), got {image_size}')
    if image_size < 2 ** d_repeat_num:
        best = int(math.log2(image_size))
        raise FlagError(f'--d_repeat_num {d_repeat_num} halves the image {d_repeat_num} times, which needs '
                         f'--image_size >= {2 ** d_repeat_num}; for {image_size} px use --d_repeat_num <= {best}')
    if not 0 <= d_local_head < d_repeat_num:
        raise FlagError(f'--d_local_head must be 0 (off) or a critic layer from 1 to {d_repeat_num - 1} '
                         f'(--d_repeat_num {d_repeat_num}), got {d_local_head}')


def init_weights(module):
    """N(0, 0.02) convolutions, as the released models; unit affine norms."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.InstanceNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- trained networks

# A GANimation of the demo's architecture trained beforehand by this code, its generator in fp16 (2.4 MB): the
# demo shows its animations at once while its own model trains, and the face editor serves it when there is
# no run yet. The command that made it and its figures: pretrained/README.md.
PRETRAINED_DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pretrained', 'demo_ganimation_32px.ckpt')
# A GANimation trained by this code on real faces (photos of people, grey and colour), its generator in fp16: the
# face editor serves it when there is no run of the user's own; test mode takes it for photos and videos.
PRETRAINED_REAL = os.path.join(os.path.dirname(PRETRAINED_DEMO), 'ganimation_real_64px.ckpt')
GENERATOR_SHAPE = ('image_size', 'g_conv_dim', 'g_repeat_num', 'g_upsample', 'g_warp', 'g_condition')


class Trained:
    """A checkpoint read once: which model made it (`model`: ganimation or ganmut), its config, its
    condition names, its iteration, and its networks on demand. Test, eval and demo modes read the
    newest checkpoint of a run once and choose the model from it. A generator released by another
    implementation (released.py) is read into the same form, with its critic when one lies beside it."""

    def __init__(self, path, ckpt):
        self.path, self.ckpt = path, ckpt
        self.config = ckpt['config']
        self.label_names = list(ckpt['label_names'])
        self.model = ckpt.get('model', self.config.get('model', 'ganimation'))
        self.iteration = int(ckpt['iteration'])
        self.released = self.config.get('released_format')
        check_removed_options(self.config, path)

    @classmethod
    def newest(cls, models_dir, which='latest'):
        """The newest checkpoint of a run folder; or a released generator file, or the newest in a folder."""
        if os.path.isfile(models_dir):
            state = released.read_state(models_dir)
            if 'config' in state and 'G' in state:          # a checkpoint of this code, named as a file
                return cls(models_dir, checkpoint.load(models_dir))
            return cls.from_released(models_dir, state)
        if os.path.isdir(models_dir) and not checkpoint.list_checkpoints(models_dir):
            found = released.generator_file(models_dir)
            if found:
                return cls.from_released(found)
        return cls(*checkpoint.load_newest(models_dir, which))

    @classmethod
    def from_released(cls, path, state=None):
        """A released generator file (and the critic beside it) as a checkpoint of this code."""
        state = released.read_state(path) if state is None else state
        fmt_name = released.recognise(state, path)
        fmt = released.FORMATS[fmt_name]
        config = released.generator_config(state, fmt_name)
        ganmut = fmt['model'] == 'ganmut'
        names = released.EMOTIONS if ganmut else list(AU_NAMES[:config['c_dim']])
        G = Generator(config['g_conv_dim'], config['emotion_dim'] if ganmut else config['c_dim'],
                      config['g_repeat_num'], attention=not ganmut, **generator_options(config))
        ckpt = dict(config=config, label_names=names, model=fmt['model'], iteration=0,
                    G=released.convert(state, fmt['rules'], G, path, fmt.get('space_keys', ())))
        if ganmut:
            ckpt['space'] = released.space_state(state, fmt_name)
        critic = released.critic_path(path, fmt_name)
        if critic:
            d_state = released.read_state(critic)
            d_fmt = released.recognise(d_state, critic, released.CRITIC_FORMATS, 'critic')
            config.update(released.critic_config(d_state, d_fmt), released_critic=critic)
            D = Discriminator(config['image_size'], config['d_conv_dim'], len(names), config['d_repeat_num'])
            ckpt['D'] = released.convert(d_state, released.CRITIC_FORMATS[d_fmt]['rules'], D, critic)
        return cls(path, ckpt)

    def amp_dtype(self, amp_flag, device):
        """The autocast dtype of test and eval modes: --amp's choice, but a released generator runs in fp32
        unless --amp bf16 is asked (bf16 moves its pixels by up to 25 levels from its authors' images)."""
        if self.released and amp_flag == 'auto':
            return None
        return resolve_amp(amp_flag, device)

    def load(self, key, module):
        """`module` with the checkpoint's weights under `key`, checked name by name and shape by shape."""
        checkpoint.check_state_dict(module, self.ckpt[key], key, self.path)
        module.load_state_dict(self.ckpt[key])
        return module

    def networks(self, device):
        """G (the weight average when training kept one) and D in eval mode, built from the checkpoint's
        own config: conditioned on the AUs (GANimation) or on a point of the emotion space (GANmut).
        D is None for a released generator without its critic."""
        c, ganmut = self.config, self.model == 'ganmut'
        G = Generator(c['g_conv_dim'], c['emotion_dim'] if ganmut else len(self.label_names), c['g_repeat_num'],
                      attention=resolve_flag(c.get('attention', 'true'), True) if ganmut else True,
                      **generator_options(c))
        g_key = 'G_ema' if 'G_ema' in self.ckpt else 'G'
        G = self.load(g_key, G).to(device).eval()
        if 'D' not in self.ckpt:
            return G, None
        D = Discriminator(c['image_size'], c['d_conv_dim'], len(self.label_names), c['d_repeat_num'],
                          code_dim=c['emotion_dim'] if ganmut else 0, **critic_options(c))
        return G, self.load('D', D).to(device).eval()


@torch.no_grad()
def critic_reading(D, x, device, batch_size=64):
    """(N, c_dim) AUs in [0, 1] that the critic's AU head reads from images x (on CPU): the start of
    test mode's --target_aus edits, and the source AUs of a generator with --g_condition relative."""
    return torch.cat([D(x[s:s + batch_size].to(device))[1].float().clamp(0, 1).cpu()
                      for s in range(0, x.shape[0], batch_size)])
