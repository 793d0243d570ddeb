"""Networks: the attention generator and the PatchGAN critic (SPEC sections 4 and 5).

Instance norm never keeps running statistics, so every image is normalised with
its own statistics in training *and* at test time (models released with stored
statistics and run in eval mode produced ruined faces).
"""
import math

import torch
import torch.nn as nn


def _norm(ch):
    return nn.InstanceNorm2d(ch, affine=True, track_running_stats=False)


class ResidualBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), _norm(ch), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), _norm(ch))

    def forward(self, x):
        return x + self.body(x)


class Generator(nn.Module):
    """Image + condition tiled over it -> encoder / residual blocks / decoder.

    With `attention` (GANimation) there are two heads: colour C (tanh) and
    attention A (sigmoid), and the output is y = A * x + (1 - A) * C: where A is
    near 1 the input pixel is kept. Without it (the released GANmut generator)
    the tanh head is the output. forward() returns (y, A, C); A is None without
    attention.
    """

    def __init__(self, conv_dim=64, c_dim=17, repeat_num=6, attention=True, upsample='transposed'):
        super().__init__()
        if upsample not in ('transposed', 'resize'):
            raise ValueError(f'--g_upsample must be transposed or resize, got {upsample!r}')
        self.c_dim, self.attention = c_dim, attention
        layers = [nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False), _norm(conv_dim), nn.ReLU(inplace=True)]
        ch = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), _norm(ch * 2), nn.ReLU(inplace=True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(repeat_num)]
        for _ in range(2):
            if upsample == 'transposed':   # SPEC section 4
                up = [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False)]
            else:   # nearest-neighbour resize, then a conv: no checkerboard pattern (Odena et al., 2016)
                up = [nn.Upsample(scale_factor=2, mode='nearest'), nn.Conv2d(ch, ch // 2, 3, 1, 1, bias=False)]
            layers += up + [_norm(ch // 2), nn.ReLU(inplace=True)]
            ch //= 2
        self.main = nn.Sequential(*layers)
        self.color = nn.Sequential(nn.Conv2d(ch, 3, 7, 1, 3, bias=False), nn.Tanh())
        self.attn = nn.Sequential(nn.Conv2d(ch, 1, 7, 1, 3, bias=False), nn.Sigmoid()) if attention else None
        init_weights(self)

    def forward(self, x, c):
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f'the generator needs image sides divisible by 4, got {tuple(x.shape[-2:])}')
        c_map = c.to(x.dtype).view(c.shape[0], c.shape[1], 1, 1).expand(-1, -1, x.shape[2], x.shape[3])
        h = self.main(torch.cat([x, c_map], dim=1))
        color = self.color(h)
        if self.attn is None:
            return color, None, color
        attn = self.attn(h)
        return attn * x + (1 - attn) * color, attn, color


class Discriminator(nn.Module):
    """PatchGAN critic with extra heads.

    Returns (patch scores (B, 1, h, w), class / AU output (B, c_dim), code (B, code_dim) or None).
    For GANimation `c_dim` heads regress the AUs; for GANmut they are emotion logits
    and `code_dim` outputs regress the 2-D (or 3-D) emotion code.
    """

    def __init__(self, image_size=128, conv_dim=64, c_dim=17, repeat_num=6, code_dim=0, label_trunk='shared'):
        super().__init__()
        check_sizes(image_size, repeat_num)
        if label_trunk not in ('shared', 'separate'):
            raise ValueError(f'--d_label_trunk must be shared or separate, got {label_trunk!r}')
        self.main, ch = _patch_trunk(conv_dim, repeat_num)
        # 'separate': the label heads (AUs, emotions, code) get a trunk of their own, so
        # the realism score does not share features with a regression weighted 160x.
        self.label_main = _patch_trunk(conv_dim, repeat_num)[0] if label_trunk == 'separate' else None
        k = image_size // 2 ** repeat_num
        self.src = nn.Conv2d(ch, 1, 3, 1, 1, bias=False)
        self.cls = nn.Conv2d(ch, c_dim, k, bias=False)
        self.code = nn.Conv2d(ch, code_dim, k, bias=False) if code_dim else None
        init_weights(self)

    def forward(self, x):
        h = self.main(x)
        if self.label_main is not None:
            h_label = self.label_main(x)
        else:
            h_label = h
        out_cls = self.cls(h_label).flatten(1)
        out_code = self.code(h_label).flatten(1) if self.code is not None else None
        return self.src(h), out_cls, out_code


def _patch_trunk(conv_dim, repeat_num):
    """4x4 stride-2 convs with LeakyReLU(0.01), doubling the channels; returns (trunk, out channels)."""
    layers = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01, inplace=True)]
    ch = conv_dim
    for _ in range(1, repeat_num):
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(0.01, inplace=True)]
        ch *= 2
    return nn.Sequential(*layers), ch


def check_sizes(image_size, d_repeat_num):
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f'--image_size must be a power of two (32, 64, 128, ...), got {image_size}')
    if image_size < 2 ** d_repeat_num:
        best = int(math.log2(image_size))
        raise ValueError(f'--d_repeat_num {d_repeat_num} halves the image {d_repeat_num} times, which needs '
                         f'--image_size >= {2 ** d_repeat_num}; for {image_size} px use --d_repeat_num <= {best}')


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
