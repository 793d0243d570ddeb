"""The CPU fast path of the critic's small convolutions: oneDNN runs convolutions with a tiny output (the
critic's last layers and heads) slowly, so on the CPU they run as one matrix product over the unfolded
input (SmallOutputConv2d, switched by --small_conv_matmul), and the written-out gradient penalty
(--explicit_gp) takes their input gradient the same way (conv_input_grad). docs/benchmarks.md has the figures."""
import weakref

import torch
import torch.nn as nn


class SmallOutputConv2d(nn.Conv2d):
    """nn.Conv2d that, with `as_matmul` set and on the CPU, computes a convolution whose
    output has at most `MAX_AREA` pixels as one matrix product of its patches.

    The critic's last layers have a 2x2 (or 1x1) output and the largest weights of the
    network (512 x 256 x 4 x 4 at d_conv_dim 32): oneDNN's convolution kernels block over
    output pixels and run those layers, their backward pass above all, at a few percent
    of the matrix unit's speed (27 ms against 6.5 ms for forward + backward of that layer
    at batch 48, bf16, 2-core AMX CPU). Same weights, same function, same state_dict.
    """
    MAX_AREA = 4
    as_matmul = False

    def forward(self, x):
        if not (self.as_matmul and x.device.type == 'cpu' and self.groups == 1 and self.dilation == (1, 1)
                and self.padding_mode == 'zeros' and _out_area(x, self) <= self.MAX_AREA):
            return super().forward(x)
        return conv2d_as_matmul(x, self.weight, self.bias, self.stride, self.padding)


def _out_area(x, conv):
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    return ((x.shape[-2] + 2 * ph - kh) // sh + 1) * ((x.shape[-1] + 2 * pw - kw) // sw + 1)


def _matmul_dtype(t):
    """The dtype the CPU matrix-product paths compute in: autocast's when it is on, else t's."""
    return torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else t.dtype


def conv2d_as_matmul(x, weight, bias, stride, padding):
    """F.conv2d(x, weight, bias, stride, padding) as (B * out pixels, kh * kw * C) @ (kh * kw * C, O).

    Patches are gathered by slicing (few output pixels), in (kh, kw, C) order so that a
    channels-last weight reshapes without a copy. Under CPU autocast both operands are cast
    to its dtype once. Differentiable twice (the gradient penalty differentiates through it).
    """
    B, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    dtype = _matmul_dtype(x)
    xp = nn.functional.pad(x.to(dtype), (pw, pw, ph, ph))
    patches = torch.stack([xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
                           for i in range(Ho) for j in range(Wo)], 1)          # (B, L, C, kh, kw)
    rows = patches.permute(0, 1, 3, 4, 2).reshape(B * Ho * Wo, kh * kw * C)
    w = _cast_weight(weight, dtype).permute(0, 2, 3, 1).reshape(O, -1)
    with torch.autocast('cpu', enabled=False):
        y = rows @ w.t() if bias is None else torch.addmm(bias.to(dtype), rows, w.t())
    return y.view(B, Ho, Wo, O).permute(0, 3, 1, 2)


# id(weight) -> (weak reference to it, key, cast): one entry per critic weight. A cast recorded by
# autograd keeps its weight alive (its graph node refers to it), so the finalizer that drops the
# entry runs only for weights cast without grad; for the one critic of a run that costs nothing.
_CASTS = {}


def _cast_weight(weight, dtype):
    """`weight` in `dtype`, cast once per weight update and shared by the critic's passes in
    a step (forward, the penalty's sign pass and its transposed pass: one cast and one cast
    of the gradient back instead of three and two, on the network's largest tensor).
    Autocast caches its casts the same way, but only of the parameters themselves, not of
    the reshaped views these matrix products take. Valid while the weight's version
    counter (bumped by every in-place update) and requires_grad are unchanged; a cast made
    without autograd recording is not used where the gradient must flow."""
    if weight.dtype == dtype:
        return weight
    key = (weight._version, dtype, weight.requires_grad)
    hit = _CASTS.get(id(weight))
    if hit is not None and hit[0]() is weight and hit[1] == key:
        cast = hit[2]
        if cast.requires_grad or not (torch.is_grad_enabled() and weight.requires_grad):
            return cast
    if hit is None or hit[0]() is not weight:
        weakref.finalize(weight, _CASTS.pop, id(weight), None)
    cast = weight.to(dtype)
    _CASTS[id(weight)] = (weakref.ref(weight), key, cast)
    return cast


def conv_input_grad(conv, grad_out, in_shape):
    """The input gradient of `conv` (no dilation, no groups) for `grad_out`: its transposed
    convolution, or for a small output (SmallOutputConv2d.as_matmul) a matrix product and
    the scatter of the patches."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    H, W = in_shape[-2:]
    Ho, Wo = grad_out.shape[-2:]
    if getattr(conv, 'as_matmul', False) and grad_out.device.type == 'cpu' and Ho * Wo <= conv.MAX_AREA:
        dtype = _matmul_dtype(grad_out)
        B, O = grad_out.shape[:2]
        rows = grad_out.to(dtype).permute(0, 2, 3, 1).reshape(B * Ho * Wo, O)
        w = _cast_weight(conv.weight, dtype).permute(0, 2, 3, 1).reshape(O, -1)
        with torch.autocast('cpu', enabled=False):
            patches = (rows @ w).view(B, Ho, Wo, kh, kw, -1).permute(0, 1, 2, 5, 3, 4)   # (B, Ho, Wo, C, kh, kw)
        Hp, Wp = H + 2 * ph, W + 2 * pw
        grad = sum(nn.functional.pad(patches[:, i, j], (j * sw, Wp - j * sw - kw, i * sh, Hp - i * sh - kh))
                   for i in range(Ho) for j in range(Wo))
        return grad[..., ph:ph + H, pw:pw + W]
    out_pad = (H - ((Ho - 1) * sh - 2 * ph + kh), W - ((Wo - 1) * sw - 2 * pw + kw))
    return nn.functional.conv_transpose2d(grad_out, conv.weight, stride=(sh, sw), padding=(ph, pw),
                                          output_padding=out_pad)


def use_matmul_for_small_convs(module, on):
    """Switch SmallOutputConv2d.as_matmul in every layer of `module`."""
    for m in module.modules():
        if isinstance(m, SmallOutputConv2d):
            m.as_matmul = on
