"""Image metrics against a true answer, and the true answer itself: on the synthetic faces every edit has
one, the same identity rendered with the target AUs (or emotion)."""
import io

import torch
import torch.nn.functional as F
from PIL import Image

import data_loader as dl
import synthetic_faces as sf


def gaussian_window(size=11, sigma=1.5):
    """(size, size) normalised gaussian kernel."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(x, y, data_range=2.0, window_size=11, sigma=1.5):
    """Per-image SSIM (Wang et al. 2004) of (B, C, H, W) images: gaussian window,
    K1 = 0.01, K2 = 0.03, statistics over the valid region, mean over pixels and channels."""
    x, y = x.double(), y.double()
    c = x.shape[1]
    w = gaussian_window(window_size, sigma).to(x.device, torch.float64).expand(c, 1, -1, -1)

    def blur(t):
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()


def psnr(x, y, data_range=2.0):
    """Per-image PSNR in dB (capped at 100 dB for identical images)."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1).clamp_min(1e-10 * data_range ** 2)
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def l1(x, y):
    return (x.float() - y.float()).abs().flatten(1).mean(1)


def image_scores(y, truth):
    return {'l1': l1(y, truth).mean().item(), 'psnr': psnr(y, truth).mean().item(),
            'ssim': ssim(y, truth).mean().item()}


def render_like_dataset(identity_seed, aus05, native_size, size):
    """The true rendering, resized the way the data loader resizes the stored images."""
    img = sf.render(sf.sample_identity(identity_seed), aus05, native_size)
    if native_size == size:
        return img
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='PNG')
    buf.seek(0)
    return dl.load_image(buf, size)


def against_truth(res, y, x_src, truth):
    """Adds to `res` the image scores of the outputs `y` and of the do-nothing baseline (the sources
    `x_src`) against the true renderings, and edit_error_reduction = 1 - model L1 / baseline L1
    (> 0: closer to the truth than not editing)."""
    res['model'].update(image_scores(y, truth))
    res['baseline'].update(image_scores(x_src, truth))
    res['edit_error_reduction'] = error_reduction(res['model']['l1'], res['baseline']['l1'])


def error_reduction(l1_model, l1_baseline):
    return 1 - l1_model / max(l1_baseline, 1e-12)
