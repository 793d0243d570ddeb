"""GANimation losses as plain functions.

Each `*_loss` returns (loss, record), where record maps term names to detached
0-dim tensors for logging: reading them (`.item()`) would make the host wait for the
device every step, so the solver sums them on the device and reads them at log steps. Conventions of the weights:

- AU loss: `F.mse_loss` with its default mean over the batch *and* the AUs, on AUs
  scaled to [0, 1]. lambda_cls = 160 here equals the official code's 4000 with a
  loss summed over a batch of 25.
- Attention smoothness: the mean-based total variation,
  TV(A) = mean|A[..., :, 1:] - A[..., :, :-1]| + mean|A[..., 1:, :] - A[..., :-1, :]|,
  with lambda_smooth ~1e-4. A sum-based TV (official code, 1e-5) is tens of
  thousands of times larger per unit weight; do not mix the two.
- Attention saturation: mean of A (the penalty pushes A towards 0, i.e. towards
  using the colour head; the other losses push it towards 1).
"""
import torch
import torch.nn.functional as F


def tv_loss(attn):
    """Mean-based total variation of a (B, 1, H, W) mask."""
    return ((attn[..., :, 1:] - attn[..., :, :-1]).abs().mean()
            + (attn[..., 1:, :] - attn[..., :-1, :]).abs().mean())


def color_keep_loss(color, x, attn):
    """L1 between the colour head C and the generator's input x, weighted by A (detached):
    where the mask keeps the input, C should be that input.

    Without it nothing shapes C where A is near 1, and C becomes an exaggerated pattern
    that the soft mask lets through in faint doses (docs/notebook.md: 0.45 from
    the truth in the pixels that change, against 0.14 for the unedited input). Pulled
    towards the face where it is unused, C is the face plus the edit where it is used.
    The weight is detached so the term shapes C and does not push the mask.
    """
    return ((color.float() - x.float()).abs() * attn.detach().float()).mean()


def au_loss(au_pred, au_target):
    return F.mse_loss(au_pred.float(), au_target.float())


def interpolate(x_real, x_fake, generator=None, alpha=None):
    """Points on the segments between real and fake images, at per-sample weights `alpha`
    (B, 1, 1, 1), drawn with `generator` when not given."""
    if alpha is None:
        alpha = torch.rand(x_real.shape[0], 1, 1, 1, device=x_real.device, generator=generator)
    return (alpha * x_real + (1 - alpha) * x_fake).requires_grad_(True)


def gradient_penalty(critic_out, x_hat):
    """mean((||d critic_out / d x_hat||_2 - 1)^2), the norm taken per sample in fp32.

    The gradient is taken of the fp32 sum of the scores, so a bf16 forward pass
    still gives an fp32 norm (the penalty compares the norm to 1, where bf16's
    8-bit mantissa would be coarse).
    """
    grad, = torch.autograd.grad(critic_out.float().sum(), x_hat, create_graph=True)
    return penalty_of_gradient(grad)


def penalty_of_gradient(grad):
    """mean((||grad||_2 - 1)^2) of per-sample input gradients (fp32 norm): the gradient
    penalty, for a gradient obtained by autograd or written out
    (model.Discriminator.realism_input_gradient)."""
    norm = grad.float().flatten(1).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


def critic_loss(out_real, out_fake, au_pred_real, aus_real, gp, lambda_gp, lambda_cls, adv='wgan-gp'):
    """Critic loss with the AU regression head trained on real images. `adv`:
    'wgan-gp' (the original code): -mean D(x) + mean D(x_f) + lambda_gp * GP;
    'ns-r1' (StarGAN v2, StyleGAN): softplus(-D(x)) + softplus(D(x_f)), means, + lambda_gp * R1,
    where `gp` then holds the R1 penalty of the real images."""
    loss_real, loss_fake = scored_as_real(out_real, adv), scored_as_fake(out_fake, adv)
    loss_cls = au_loss(au_pred_real, aus_real)
    loss = loss_real + loss_fake + lambda_gp * gp + lambda_cls * loss_cls
    return loss, record_of({'D/loss': loss, 'D/real': loss_real, 'D/fake': loss_fake, 'D/gp': gp, 'D/au': loss_cls})


def scored_as_real(out, adv):
    """The adversarial loss of critic outputs that should read 'real' (the critic's real
    images, the generator's fakes)."""
    out = out.float()
    return F.softplus(-out).mean() if adv == 'ns-r1' else -out.mean()


def scored_as_fake(out, adv):
    out = out.float()
    return F.softplus(out).mean() if adv == 'ns-r1' else out.mean()


def r1_penalty(out_real, x_real):
    """R1: mean over the batch of ||d sum(out_real) / d x_real||^2 (no 1/2 factor).

    `x_real` must have had requires_grad set before the critic's forward pass.
    The gradient is of the fp32 sum of the patch scores, as losses.gradient_penalty.
    """
    grad, = torch.autograd.grad(out_real.float().sum(), x_real, create_graph=True)
    return grad.float().flatten(1).pow(2).sum(1).mean()


def attention_terms(masks):
    """(sum of mean A, sum of TV(A)) over a list of masks."""
    sat = sum(m.float().mean() for m in masks)
    smooth = sum(tv_loss(m.float()) for m in masks)
    return sat, smooth


def generator_loss(out_fake, au_pred_fake, aus_target, x_real, x_rec, masks, lambda_cls, lambda_rec,
                   lambda_sat, lambda_smooth, virtual=None, virtual_weight=0.5, adv='wgan-gp'):
    """Adversarial + AU + cycle + attention terms.

    `masks`: attention masks of the forward and reconstruction passes (empty for
    a generator without attention). `virtual`: optional (x_virtual_rec, x_fake,
    virtual_masks) of the virtual cycle; its L1 is mixed with the ordinary
    cycle by `virtual_weight`, and its masks join the attention terms.
    """
    loss_adv = scored_as_real(out_fake, adv)
    loss_cls = au_loss(au_pred_fake, aus_target)
    loss_rec = (x_rec.float() - x_real.float()).abs().mean()
    masks = list(masks)
    record = {}
    if virtual is not None:
        x_vrec, x_fake_target, vmasks = virtual
        loss_vrec = (x_vrec.float() - x_fake_target.float()).abs().mean()
        record['G/rec_virtual'] = loss_vrec
        loss_rec = (1 - virtual_weight) * loss_rec + virtual_weight * loss_vrec
        masks += list(vmasks)
    if masks:
        sat, smooth = attention_terms(masks)
        sat, smooth = sat * 2 / len(masks), smooth * 2 / len(masks)   # same scale as the two-mask path
    else:
        sat = smooth = torch.zeros((), device=out_fake.device)
    loss = loss_adv + lambda_cls * loss_cls + lambda_rec * loss_rec + lambda_sat * sat + lambda_smooth * smooth
    record.update({'G/loss': loss, 'G/fake': loss_adv, 'G/au': loss_cls, 'G/rec': loss_rec,
                   'G/attn_sat': sat, 'G/attn_tv': smooth})
    return loss, record_of(record)


def record_of(parts):
    """A loss record: each part detached, as an fp32 0-dim tensor on its device (no host sync)."""
    return {k: v.detach().float().reshape(()) for k, v in parts.items()}
