"""GANmut: the learned emotion spaces.

The generator is conditioned on a low-dimensional code `z` (2-D, optionally
3-D) instead of an AU vector; the space that maps emotions to codes is learned
jointly with the GAN from categorical labels only. Two parametrisations:

- `LinearSpace`: one learnable unit axis per non-neutral emotion; a code is
  `strength * axis_e` (+ noise); neutral sits at the origin. Editing takes a
  polar code `z = rho * (cos theta, sin theta)`.
- `GaussianSpace`: one learnable Gaussian (mean, covariance) per emotion; the
  class distribution a code should produce is `softmax(-d_e(z))`, `d_e` the
  squared Mahalanobis distance to emotion e. Editing takes a point (x, y).

Both are `nn.Module`s: their parameters belong with the generator's optimiser
(they are moved by the generator losses) and in the generator's checkpoint.
Nothing here assumes seven emotions; all code is vectorised over the batch
and the emotions.

The losses that train the space with the GAN are in ganmut/losses.py.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from synthetic_faces import EMOTIONS as EMOTION_NAMES  # 0 neutral, 1 happy, ... as the emotion CSV (data_loader.read_emotion_csv)
from utils.errors import FlagError

PARAMETRIZATIONS = ('linear', 'gaussian')
CYCLES = ('approximate', 'original')


def emotion_names(num_emotions, names=None):
    """The first `num_emotions` names of `names` (default EMOTION_NAMES), padded with 'emotion<i>'."""
    names = list(EMOTION_NAMES if names is None else names)
    return names[:num_emotions] + [f'emotion{i}' for i in range(len(names), num_emotions)]


def _uniform(shape, gen, device, low=0.0, high=1.0):
    """U[low, high) drawn with `gen` (on the generator's own device), returned on `device`."""
    dev = gen.device if gen is not None else device
    return (torch.rand(shape, generator=gen, device=dev) * (high - low) + low).to(device)


def _normal(shape, gen, device):
    dev = gen.device if gen is not None else device
    return torch.randn(shape, generator=gen, device=dev).to(device)


class _EmotionSpace(nn.Module):
    def __init__(self, num_emotions, dim, neutral_index, names):
        super().__init__()
        if num_emotions < 2:
            raise FlagError(f'an emotion space needs at least 2 emotions, got {num_emotions}')
        if dim < 2:
            raise FlagError(f'the emotion code needs at least 2 dimensions, got {dim}')
        if neutral_index is not None and not 0 <= neutral_index < num_emotions:
            raise ValueError(f'neutral_index {neutral_index} is not in [0, {num_emotions})')
        self.num_emotions, self.dim, self.neutral_index = num_emotions, dim, neutral_index
        self.names = emotion_names(num_emotions, names)

    def emotion_index(self, emotion):
        """Index of an emotion given by index or (case-insensitive) name."""
        if isinstance(emotion, str):
            lowered = [n.lower() for n in self.names]
            if emotion.lower() not in lowered:
                raise ValueError(f'unknown emotion {emotion!r}; known: {", ".join(self.names)}')
            return lowered.index(emotion.lower())
        index = int(emotion)
        if not 0 <= index < self.num_emotions:
            raise ValueError(f'emotion index {index} is not in [0, {self.num_emotions})')
        return index

    def emotion_code(self, emotions, intensity):
        """Differentiable codes of emotions (B,) long at intensities (B,); (B, dim)."""
        raise NotImplementedError

    @torch.no_grad()
    def code_for(self, emotion, intensity=1.0):
        """Editing code (dim,) of one emotion (index or name) at an intensity; detached."""
        device = next(self.parameters()).device
        e = torch.tensor([self.emotion_index(emotion)], device=device)
        return self.emotion_code(e, torch.tensor([float(intensity)], device=device))[0].detach()


class LinearSpace(_EmotionSpace):
    """One learnable unit axis per non-neutral emotion (linear).

    The raw axes are initialised near zero (N(0, init_std^2), torch's global
    RNG) and normalised to unit length whenever they are used, so their
    directions are random at the start and free to rotate. The neutral emotion
    has no axis: its row of `axes()` is exactly zero.
    """

    def __init__(self, num_emotions, dim=2, neutral_index=0, init_std=0.01, names=None):
        if neutral_index is None:
            raise ValueError('the linear space needs a neutral emotion (it sits at the origin)')
        super().__init__(num_emotions, dim, neutral_index, names)
        rows = [i for i in range(num_emotions) if i != neutral_index]
        self.register_buffer('axis_rows', torch.tensor(rows, dtype=torch.long), persistent=False)
        self.raw_axes = nn.Parameter(torch.randn(num_emotions - 1, dim) * init_std)

    def axes(self):
        """(num_emotions, dim): unit axes, the neutral row exactly zero."""
        unit = F.normalize(self.raw_axes, dim=1)
        return unit.new_zeros(self.num_emotions, self.dim).index_copy(0, self.axis_rows, unit)

    def emotion_code(self, emotions, intensity):
        """intensity * axis_e (neutral -> origin); differentiable in the axes."""
        intensity = torch.as_tensor(intensity, dtype=self.raw_axes.dtype, device=self.raw_axes.device)
        return intensity.unsqueeze(-1) * self.axes()[emotions.long()]

    def sample(self, emotions, gen=None, n_random=5, noise_std=0.075,
               strength_range=(0.2, 1.0), neutral_range=(0.0, 0.2)):
        """Training codes for target emotions (B,).

        strength s ~ U[strength_range] for emotions, U[neutral_range] for neutral;
        z = s * axis_e + N(0, noise_std^2); the first min(n_random, B) codes are
        replaced by uniformly random unit directions times their drawn strength
        (no noise), so that the space between the axes is trained too.
        Returns {'code' (B, dim), 'strength' (B,), 'random' (B,) bool,
        'emotion' (B,) long}; the code is differentiable in the axes.
        """
        emotions = emotions.long()
        device, b = emotions.device, emotions.shape[0]
        u = _uniform((b,), gen, device)
        neutral = emotions == self.neutral_index
        s_neutral = neutral_range[0] + (neutral_range[1] - neutral_range[0]) * u
        s_emotion = strength_range[0] + (strength_range[1] - strength_range[0]) * u
        strength = torch.where(neutral, s_neutral, s_emotion)
        code = strength.unsqueeze(1) * self.axes().to(device)[emotions] + noise_std * _normal((b, self.dim), gen, device)
        k = min(max(int(n_random), 0), b)
        if k:
            directions = F.normalize(_normal((k, self.dim), gen, device), dim=1)
            code = torch.cat([strength[:k].unsqueeze(1) * directions, code[k:]])
        random = torch.arange(b, device=device) < k
        return {'code': code, 'strength': strength, 'random': random, 'emotion': emotions}

    def polar(self, theta_deg, rho=1.0):
        """Editing code rho * (cos theta, sin theta) (2-D spaces only); theta in degrees."""
        if self.dim != 2:
            raise ValueError(f'polar codes need a 2-D space; this one is {self.dim}-D')
        t = math.radians(float(theta_deg))
        return torch.tensor([rho * math.cos(t), rho * math.sin(t)], device=self.raw_axes.device)

    @torch.no_grad()
    def describe(self, names=None):
        """One line per emotion: its axis as the editing CLI takes it (--theta T --rho R).

        The axes are unit vectors, so rho 1 is the strongest training strength;
        rho in [0.2, 1] covers what training saw.
        """
        names = emotion_names(self.num_emotions, names if names is not None else self.names)
        axes = self.axes().cpu()
        width = max(len(n) for n in names)
        lines = []
        for i, name in enumerate(names):
            if i == self.neutral_index:
                lines.append(f'{name:>{width}}: origin (--rho 0)')
            elif self.dim == 2:
                theta = math.degrees(math.atan2(axes[i, 1].item(), axes[i, 0].item())) % 360.0
                lines.append(f'{name:>{width}}: theta {theta:6.1f} deg, rho 1.0 at full intensity '
                             f'(--theta {theta:.1f} --rho 1.0)')
            else:
                coords = ' '.join(f'{v:+.3f}' for v in axes[i].tolist())
                lines.append(f'{name:>{width}}: unit axis ({coords}), scale by the intensity')
        return lines


class GaussianSpace(_EmotionSpace):
    """One learnable Gaussian per emotion (gaussian).

    Mean mu_e = tanh(m_e), inside (-1, 1)^dim. Covariance:
    - 2-D: C_e = R(theta_e) diag(|a_e1|, |a_e2|) R(theta_e)^T + eps I;
    - 3-D and more: C_e = L_e L_e^T + eps I with L_e the lower triangle of a
      learnable matrix (any SPD matrix has this form; eps I keeps it
      invertible when L_e is singular).
    Both are symmetric positive definite for any parameter values.

    Initialisation: the neutral mean at the origin, the other means spread
    evenly on a circle of radius `init_radius` (2-D) or along random
    directions (torch's global RNG) at that radius (3-D); covariances
    isotropic with variance `init_var`.
    """

    def __init__(self, num_emotions, dim=2, neutral_index=0, init_radius=0.5, init_var=0.1, eps=1e-4,
                 names=None):
        super().__init__(num_emotions, dim, neutral_index, names)
        self.eps = float(eps)
        others = [i for i in range(num_emotions) if i != neutral_index]
        if dim == 2:
            angles = torch.arange(len(others), dtype=torch.float32) * (2 * math.pi / len(others))
            directions = torch.stack([angles.cos(), angles.sin()], dim=1)
        else:
            directions = F.normalize(torch.randn(len(others), dim), dim=1)
        mu = torch.zeros(num_emotions, dim)
        mu[others] = init_radius * directions
        self.raw_means = nn.Parameter(torch.atanh(mu))
        if dim == 2:
            self.theta = nn.Parameter(torch.zeros(num_emotions))
            self.raw_scales = nn.Parameter(torch.full((num_emotions, 2), float(init_var)))
        else:
            self.raw_chol = nn.Parameter(torch.eye(dim).repeat(num_emotions, 1, 1) * math.sqrt(init_var))

    def means(self):
        """(num_emotions, dim): tanh of the raw means."""
        return torch.tanh(self.raw_means)

    def _rotations(self):
        c, s = self.theta.cos(), self.theta.sin()
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)   # (E, 2, 2)

    def covariances(self):
        """(num_emotions, dim, dim), symmetric positive definite."""
        if self.dim == 2:
            rot = self._rotations()
            # R diag(|a|) R^T + eps I == R diag(|a| + eps) R^T, as R R^T = I
            return rot @ torch.diag_embed(self.raw_scales.abs() + self.eps) @ rot.transpose(-1, -2)
        low = torch.tril(self.raw_chol)
        eye = torch.eye(self.dim, device=low.device, dtype=low.dtype)
        return low @ low.transpose(-1, -2) + self.eps * eye

    def precisions(self):
        """Inverse covariances (num_emotions, dim, dim); closed form in 2-D."""
        if self.dim == 2:
            rot = self._rotations()
            return rot @ torch.diag_embed(1.0 / (self.raw_scales.abs() + self.eps)) @ rot.transpose(-1, -2)
        return torch.linalg.inv(self.covariances())

    def mahalanobis_sq(self, z):
        """(B, num_emotions): (z - mu_e)^T C_e^-1 (z - mu_e), in fp32 even under autocast."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            diff = z.float().unsqueeze(1) - self.means().unsqueeze(0)            # (B, E, D)
            return torch.einsum('bei,eij,bej->be', diff, self.precisions(), diff)

    def target_distribution(self, z):
        """(B, num_emotions): softmax(-d_e(z)) over the emotions."""
        return F.softmax(-self.mahalanobis_sq(z), dim=1)

    def target_log_distribution(self, z):
        """log of target_distribution, computed stably (what the generator loss takes)."""
        return F.log_softmax(-self.mahalanobis_sq(z), dim=1)

    def sample(self, batch_size, gen=None):
        """Training codes: the first min(E, B) are the emotions' means, the rest U[-1, 1]^dim.

        The means are *not* detached: the prediction loss on the mean-coded
        fakes moves them. With B >= E the means come in
        emotion order; with B < E a random subset (drawn with `gen`) is used,
        so that every emotion is trained over the batches.
        Returns {'code' (B, dim), 'emotion' (B,) long (-1 where the code is not
        a mean), 'is_mean' (B,) bool}.
        """
        device = self.raw_means.device
        k = min(self.num_emotions, batch_size)
        if k == self.num_emotions:
            order = torch.arange(k, device=device)
        else:
            perm_device = gen.device if gen is not None else device
            order = torch.randperm(self.num_emotions, generator=gen, device=perm_device)[:k].to(device)
        rest = _uniform((batch_size - k, self.dim), gen, device, -1.0, 1.0)
        code = torch.cat([self.means()[order], rest])
        emotion = torch.cat([order, torch.full((batch_size - k,), -1, dtype=torch.long, device=device)])
        return {'code': code, 'emotion': emotion, 'is_mean': emotion >= 0}

    def emotion_code(self, emotions, intensity):
        """anchor + intensity * (mu_e - anchor), anchor = the neutral mean (the origin without one).

        Intensity 0 gives the neutral face, 1 the emotion's mean; differentiable.
        """
        means = self.means()
        if self.neutral_index is None:
            anchor = means.new_zeros(self.dim)
        else:
            anchor = means[self.neutral_index]
        intensity = torch.as_tensor(intensity, dtype=means.dtype, device=means.device)
        return anchor + intensity.unsqueeze(-1) * (means[emotions.long()] - anchor)

    @torch.no_grad()
    def describe(self, names=None):
        """One line per emotion: the mean's coordinates (the point editing takes) and its spread."""
        names = emotion_names(self.num_emotions, names if names is not None else self.names)
        means = self.means().cpu()
        stds = torch.linalg.eigvalsh(self.covariances().cpu()).clamp(min=0).sqrt()
        axis = ['x', 'y', 'z'] if self.dim <= 3 else [f'z{j}' for j in range(self.dim)]
        width = max(len(n) for n in names)
        lines = []
        for i, name in enumerate(names):
            coords = ' '.join(f'{axis[j]}={v:+.3f}' for j, v in enumerate(means[i].tolist()))
            spread = '/'.join(f'{v:.3f}' for v in stds[i].flip(0).tolist())
            lines.append(f'{name:>{width}}: {coords} (std along principal axes {spread})')
        return lines


def make_space(parametrization, num_emotions, dim=2, neutral_index=0, **kwargs):
    """LinearSpace or GaussianSpace by name."""
    if parametrization == 'linear':
        return LinearSpace(num_emotions, dim, neutral_index, **kwargs)
    if parametrization == 'gaussian':
        return GaussianSpace(num_emotions, dim, neutral_index, **kwargs)
    raise FlagError(f'--parametrization must be one of {", ".join(PARAMETRIZATIONS)}, got {parametrization!r}')


# --------------------------------------------------------------------------- cycle targets

def load_space(trained, device):
    """The emotion space of a GANmut checkpoint (model.Trained), in eval mode on `device`."""
    c = trained.config
    space = make_space(c['parametrization'], len(trained.label_names), c['emotion_dim'], neutral_index=0,
                       names=trained.label_names)
    return trained.load('space', space).to(device).eval()
