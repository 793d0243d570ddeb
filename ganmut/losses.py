"""GANmut's losses: plain functions returning (loss, record), like losses.py.

Conventions:
- every MSE / L1 is a mean over the batch and the components; cross-entropy
  and KL terms are means over the batch (KL summed over the classes);
- terms restricted to a part of the batch (the non-random codes, the
  non-neutral targets, the mean-coded fakes) are means over that part, and
  exactly 0 (never NaN) when the part is empty;
- the critic's regulariser (`gp` or `r1`) is computed by the caller
  (solver.Solver.critic_pass, shared with GANimation) and passed in, as
  `losses.critic_loss` takes its GP;
- codes are detached in the critic losses (the critic learns to regress the
  code it was given; the space is not moved by the critic step) and kept
  attached in the generator losses.

Cycle targets (`cycle_code_*`): the linear space can use either the
"approximate" cycle (original emotion's axis times the critic's confidence on
the real image; the default of this module) or the "original" cycle (the
critic's regression of the real image's code); the gaussian space uses the
"original" cycle.
"""
import torch
import torch.nn.functional as F

import losses


def cycle_code_approximate(space, e_org, logits_real):
    """Code to return to the real image: emotion_code(e_org, confidence).

    confidence = softmax(logits_real)[e_org], the critic's (detached)
    probability of the real image's own emotion. Linear space: axis times
    confidence, neutral -> exactly the origin; gradient reaches the axes
    through the cycle. (For a GaussianSpace it interpolates from the neutral
    mean; the gaussian model of GANmut's paper uses the original cycle instead.)
    """
    e_org = e_org.long()
    conf = F.softmax(logits_real.detach().float(), dim=1).gather(1, e_org.unsqueeze(1)).squeeze(1)
    return space.emotion_code(e_org, conf)


def cycle_code_original(code_hat_real):
    """Code to return to the real image: the critic's (detached) code regression of it.

    Used by the gaussian space, and by the linear space with the "original" cycle.
    """
    return code_hat_real.detach()


# --------------------------------------------------------------------------- regularisers

# --------------------------------------------------------------------------- losses

def _masked_mean(values, mask):
    """Mean of `values` over `mask`; exactly 0 (with a graph, no NaN) for an empty mask."""
    kept = torch.where(mask, values, torch.zeros_like(values))
    return kept.sum() / mask.sum().clamp(min=1).to(values.dtype)


def _attention(masks, like):
    """Attention saturation and TV of the attention generator, scaled as losses.generator_loss."""
    masks = [m for m in masks if m is not None]
    if not masks:
        zero = like.new_zeros(())
        return zero, zero
    sat, smooth = losses.attention_terms(masks)
    return sat * 2 / len(masks), smooth * 2 / len(masks)


def _critic(out_real, out_fake, logits_real, e_org, code_hat_fake, z, reg, lambda_cls, lambda_reg, lambda_code,
            code_key):
    loss_real = -out_real.float().mean()
    loss_fake = out_fake.float().mean()
    logits = logits_real.float()
    loss_cls = F.cross_entropy(logits, e_org.long())
    loss_code = F.mse_loss(code_hat_fake.float(), z.detach().float())
    reg = torch.as_tensor(reg, dtype=torch.float32, device=loss_real.device)
    loss = loss_real + loss_fake + lambda_cls * loss_cls + lambda_reg * reg + lambda_code * loss_code
    acc = (logits.argmax(1) == e_org.long()).float().mean()
    return loss, losses.record_of({'D/loss': loss, 'D/real': loss_real, 'D/fake': loss_fake, 'D/cls': loss_cls,
                                   'D/reg': reg, code_key: loss_code, 'D/acc': acc})


def linear_critic_loss(out_real, out_fake, logits_real, e_org, code_hat_fake, z, reg,
                       lambda_cls=1.0, lambda_reg=10.0, lambda_d_info=1.0):
    """-mean D(x) + mean D(x_f) + lambda_cls CE(logits(x), e_o) + lambda_reg reg + lambda_d_info MSE(code_hat(x_f), z).

    `reg`: the critic regulariser's value (gp or r1; solver.Solver.critic_pass); `z` is detached here.
    """
    return _critic(out_real, out_fake, logits_real, e_org, code_hat_fake, z, reg, lambda_cls, lambda_reg,
                   lambda_d_info, 'D/info')


def gaussian_critic_loss(out_real, out_fake, logits_real, e_org, code_hat_fake, z, reg,
                         lambda_cls=1.0, lambda_reg=10.0, lambda_expr=1.0):
    """-mean D(x) + mean D(x_f) + lambda_cls CE(logits(x), e_o) + lambda_reg reg + lambda_expr MSE(code_hat(x_f), z)."""
    return _critic(out_real, out_fake, logits_real, e_org, code_hat_fake, z, reg, lambda_cls, lambda_reg,
                   lambda_expr, 'D/expr')


def linear_generator_loss(out_fake, logits_fake, code_hat_fake, target, x_real, x_rec,
                          lambda_cls=1.0, lambda_g_strength=1.0, lambda_g_info=1.0, lambda_rec=10.0,
                          neutral_index=0, masks=(), lambda_sat=0.0, lambda_smooth=0.0):
    """Generator loss of the linear space.

    `target`: the dict of LinearSpace.sample (code z, strength s, random mask,
    emotion e_t). Terms:
      -mean D(x_f)
      + lambda_cls * CE(logits(x_f), e_t)                  over the non-random codes
      + lambda_g_strength * MSE(max softmax(logits(x_f)), s) over non-random, non-neutral targets
      + lambda_g_info * MSE(code_hat(x_f), z)              all codes; z keeps its graph to the axes
      + lambda_rec * L1(x_rec, x)                          x_rec = G(x_f, cycle code)
      + lambda_sat * mean A + lambda_smooth * TV(A)        attention generator only (`masks`)
    """
    e_t, z, s, random = target['emotion'].long(), target['code'], target['strength'], target['random']
    loss_adv = -out_fake.float().mean()
    logits = logits_fake.float()
    keep = ~random
    loss_cls = _masked_mean(F.cross_entropy(logits, e_t, reduction='none'), keep)
    confidence = F.softmax(logits, dim=1).amax(dim=1)
    loss_strength = _masked_mean((confidence - s.float()) ** 2, keep & (e_t != neutral_index))
    loss_info = F.mse_loss(code_hat_fake.float(), z.float())
    loss_rec = (x_rec.float() - x_real.float()).abs().mean()
    sat, smooth = _attention(masks, loss_adv)
    loss = (loss_adv + lambda_cls * loss_cls + lambda_g_strength * loss_strength + lambda_g_info * loss_info
            + lambda_rec * loss_rec + lambda_sat * sat + lambda_smooth * smooth)
    return loss, losses.record_of({'G/loss': loss, 'G/fake': loss_adv, 'G/cls': loss_cls, 'G/strength': loss_strength,
                                   'G/info': loss_info, 'G/rec': loss_rec, 'G/attn_sat': sat, 'G/attn_tv': smooth})


def symmetric_kl(log_p, log_q):
    """KL(p || q) + KL(q || p) = sum_c (p - q)(log p - log q), mean over the batch."""
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=1).mean()


def gaussian_generator_loss(out_fake, logits_fake, log_p_target, mean_emotion, x_real, x_rec,
                            lambda_cls=1.0, lambda_prediction=0.5, lambda_rec=10.0,
                            masks=(), lambda_sat=0.0, lambda_smooth=0.0):
    """Generator loss of the gaussian space.

    `log_p_target`: GaussianSpace.target_log_distribution(z) (log-probabilities,
    keeping the graph to the means and covariances); `mean_emotion`: the
    'emotion' of GaussianSpace.sample (-1 where the code is not a mean). Terms:
      -mean D(x_f)
      + lambda_cls * (KL(p || q) + KL(q || p)), q = softmax(logits(x_f)), all codes
      + lambda_prediction * CE(logits(x_f), e)              over the mean-coded fakes
      + lambda_rec * L1(x_rec, x)                           x_rec = G(x_f, code_hat(x))
      + attention terms as in linear_generator_loss
    """
    loss_adv = -out_fake.float().mean()
    logits = logits_fake.float()
    loss_kl = symmetric_kl(log_p_target.float(), F.log_softmax(logits, dim=1))
    mean_emotion = mean_emotion.long()
    is_mean = mean_emotion >= 0
    ce = F.cross_entropy(logits, mean_emotion.clamp(min=0), reduction='none')
    loss_pred = _masked_mean(ce, is_mean)
    loss_rec = (x_rec.float() - x_real.float()).abs().mean()
    sat, smooth = _attention(masks, loss_adv)
    loss = (loss_adv + lambda_cls * loss_kl + lambda_prediction * loss_pred + lambda_rec * loss_rec
            + lambda_sat * sat + lambda_smooth * smooth)
    return loss, losses.record_of({'G/loss': loss, 'G/fake': loss_adv, 'G/kl': loss_kl, 'G/pred': loss_pred,
                                   'G/rec': loss_rec, 'G/attn_sat': sat, 'G/attn_tv': smooth})
