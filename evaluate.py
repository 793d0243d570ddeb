"""Evaluation (SPEC section 7), kept apart from training.

On the synthetic faces every edit has a true answer: the same identity rendered
with the target AUs. For a fixed set of (held-out source image, target AUs)
pairs we compare G's output with that rendering (L1, PSNR, SSIM) and do the same
for the do-nothing baseline (output = input):

    edit_error_reduction = 1 - model.l1 / baseline.l1     (> 0: closer to the truth than not editing)

Whether the AUs were realised is read by a *separate* AU regressor, a small CNN
trained here on the training split (never the critic, which G was trained to
satisfy and can fool). Its error on the true renderings is `au_mae_floor`.
Datasets without true targets get what can be measured: AU error by the
regressor and the cycle reconstruction error.

    python main.py --mode eval --outputs_dir outputs/demo
"""
import hashlib
import io
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import checkpoint
import data_loader as dl
import synthetic_faces as sf
import visualize as vis
from model import critic_reading, load_models
from solver import images_to_float, mode_folder, resolve_amp, resolve_device

READER_VERSION = 1


# --------------------------------------------------------------------------- image metrics

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


# --------------------------------------------------------------------------- readers

class Reader(nn.Module):
    """Small CNN that reads labels from a face: AU intensities (sigmoid, [0, 1] units)
    or emotion logits. Trained on real training images only; used to score edits."""

    def __init__(self, out_dim, kind='au', conv_dim=32, depth=4):
        super().__init__()
        self.kind = kind
        layers, ch = [], 3
        for i in range(depth):
            nxt = conv_dim * 2 ** i
            layers += [nn.Conv2d(ch, nxt, 4, 2, 1, bias=False), nn.BatchNorm2d(nxt), nn.ReLU(inplace=True)]
            ch = nxt
        self.features = nn.Sequential(*layers)
        # a 4x4 map keeps *where* things are (inner vs outer brow, lid vs lip)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.2), nn.Linear(ch * 16, out_dim))

    def forward(self, x):
        return self.head(self.features(x))


def _reader_kind(labels):
    return 'emotion' if labels.dtype == torch.int64 else 'au'


def reader_path(train_set, cache_dir=None):
    """Cache file of the reader for this training set; the name changes when the
    images, their labels, the image size or the reader code change."""
    kind = _reader_kind(train_set.labels)
    h = hashlib.sha1(f'reader v{READER_VERSION} {kind} {dl._cache_key(train_set)}\n'.encode())
    h.update(train_set.labels.numpy().tobytes())
    h.update(' '.join(train_set.label_names or []).encode())
    cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(train_set.image_dir)), '.cache')
    return os.path.join(cache_dir, f'reader_{kind}_{train_set.image_size}px_{h.hexdigest()[:16]}.pt')


def fit_reader(train_set, device, iters=1500, batch_size=64, lr=2e-3, seed=0, amp_dtype=None, log=print):
    """Trains a Reader on all of `train_set` (AU regression with MSE on [0, 1] units, or
    emotion classification with cross-entropy), with horizontal flips."""
    torch.manual_seed(seed)
    labels = train_set.labels
    kind = _reader_kind(labels)
    out_dim = int(labels.max()) + 1 if kind == 'emotion' else labels.shape[1]
    net = Reader(out_dim, kind).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=iters, pct_start=0.15)
    images = torch.from_numpy(dl.uint8_cache(train_set, verbose=False).view(np.ndarray))
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    net.train()
    for it in range(iters):
        idx = torch.randint(0, len(train_set), (batch_size,), generator=g)
        x = images_to_float(images[idx], device, torch.channels_last)
        flip = torch.rand(batch_size, generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1).to(device), x.flip(-1), x)
        y = labels[idx].to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = net(x).float()
        loss = F.cross_entropy(out, y) if kind == 'emotion' else F.mse_loss(torch.sigmoid(out), y.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (it + 1) % 500 == 0:
            log(f'  reader ({kind}) iteration {it + 1}/{iters}: loss {loss.item():.4f} ({time.time() - t0:.0f}s)')
    return net.eval()


def load_or_fit_reader(train_set, device, amp_dtype=None, log=print, **fit_kw):
    """The cached reader of this training set, trained first when there is none."""
    path = reader_path(train_set)
    kind = _reader_kind(train_set.labels)
    out_dim = int(train_set.labels.max()) + 1 if kind == 'emotion' else train_set.labels.shape[1]
    if os.path.exists(path):
        net = Reader(out_dim, kind)
        net.load_state_dict(checkpoint.load(path)['reader'])
        return net.to(device, memory_format=torch.channels_last).eval()
    if log:
        log(f'training the separate {kind} reader on {len(train_set)} training images '
            f'(once; cached in {path}) ...')
    net = fit_reader(train_set, device, amp_dtype=amp_dtype, log=log, **fit_kw)
    checkpoint.save({'reader': net.state_dict(), 'label_names': list(train_set.label_names or []),
                     'version': READER_VERSION}, path)
    return net


@torch.no_grad()
def read(reader, x, batch_size=256):
    """Reader outputs for (N, 3, H, W) images in [-1, 1]: AUs in [0, 1] units or emotion logits."""
    outs = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(next(reader.parameters()).device).contiguous(memory_format=torch.channels_last)
        outs.append(reader(xb).float().cpu())
    out = torch.cat(outs)
    return torch.sigmoid(out) if reader.kind == 'au' else out


# --------------------------------------------------------------------------- the fixed pairs

def render_like_dataset(identity_seed, aus05, native_size, size):
    """The true rendering, resized the way the data loader resizes the stored images."""
    img = sf.render(sf.sample_identity(identity_seed), aus05, native_size)
    if native_size == size:
        return img
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='PNG')
    buf.seek(0)
    return dl.load_image(buf, size)


class EvalPairs:
    """A fixed, seeded set of (source image, target AUs) pairs and their true renderings.

    Sources are images of the evaluation split (held-out identities for the synthetic
    faces); each target is the AU row of another image of that split, so targets follow
    the data's AU distribution. With a model trained on a subset of AUs (--aus) only
    those columns change; the others keep the source's values, in the truth too.
    """

    def __init__(self, image_dir, attr_path, label_names, size, num_pairs=512, seed=0):
        full = dl.au_dataset(image_dir, attr_path, size, 'test')
        self.split = 'test' if dl._split_file(attr_path, 'test') else 'all'
        self.cols = dl.select_aus(label_names, full.label_names)
        self.label_names = list(label_names)
        rng = np.random.default_rng(seed)
        n = len(full)
        self.src = rng.integers(0, n, num_pairs)
        trg = (self.src + rng.integers(1, max(n, 2), num_pairs)) % n
        self.src, images = dl.load_readable(full, self.src)              # (--on_bad_data skip: readable ones)
        self.aus_src = full.labels[self.src].float()                     # all columns, [0, 1]
        self.aus_trg = self.aus_src.clone()
        self.aus_trg[:, self.cols] = full.labels[trg].float()[:, self.cols]
        self.cond_trg = self.aus_trg[:, self.cols]                        # G's condition
        self.cond_src = self.aus_src[:, self.cols]
        self.x_src = dl.to_tensor(np.stack(images))
        self.files = [full.files[i] for i in self.src]
        self.truth = None
        root = dl.synthetic_root(attr_path)
        if root and all(a in sf.AU_INDEX for a in full.label_names):
            meta = sf.read_meta(root)
            with open(os.path.join(root, 'dataset.json')) as f:
                native = json.load(f)['image_size']
            cols17 = [sf.AU_INDEX[a] for a in full.label_names]
            truth = []
            for f, aus in zip(self.files, self.aus_trg.numpy()):
                aus05 = np.zeros(sf.NUM_AUS)
                aus05[cols17] = aus * dl.AU_MAX
                truth.append(render_like_dataset(meta[f][0], aus05, native, size))
            self.truth = dl.to_tensor(np.stack(truth))

    def __len__(self):
        return len(self.src)


# --------------------------------------------------------------------------- scoring

@torch.no_grad()
def run_generator(G, pairs, device, amp_dtype=None, batch_size=64, cond_src=None):
    """(outputs, attention masks or None, cycle reconstructions) on CPU, float32. `cond_src`:
    the sources' AUs a generator with --g_condition relative gets (default: their labels)."""
    cond_src = pairs.cond_src if cond_src is None else cond_src
    outs, masks, recs = [], [], []
    for s in range(0, len(pairs), batch_size):
        x = pairs.x_src[s:s + batch_size].to(device)
        c_trg = pairs.cond_trg[s:s + batch_size].to(device)
        c_src = cond_src[s:s + batch_size].to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            y, attn, _ = G(x, c_trg, c_src)         # c_src: used with --g_condition relative only
            rec, _, _ = G(y, c_src, c_trg)
        outs.append(y.float().cpu())
        recs.append(rec.float().cpu())
        if attn is not None:
            masks.append(attn.float().cpu())
    return torch.cat(outs), (torch.cat(masks) if masks else None), torch.cat(recs)


def image_scores(y, truth):
    return {'l1': l1(y, truth).mean().item(), 'psnr': psnr(y, truth).mean().item(),
            'ssim': ssim(y, truth).mean().item()}


def score(G, pairs, reader, device, amp_dtype=None, D=None):
    """All figures for G on `pairs` -> (results dict, outputs, masks). A generator with
    --g_condition relative gets the sources' labels as their AUs; with the critic `D` it is
    also scored as test mode runs it, on the critic's reading of each source
    (`source_read_by_critic`)."""
    was_training = G.training
    G.eval()   # no effect on the layers (IN uses per-image statistics); for clarity
    y, attn, rec = run_generator(G, pairs, device, amp_dtype)
    y_read = None
    if getattr(G, 'relative', False) and D is not None:
        y_read = run_generator(G, pairs, device, amp_dtype, cond_src=critic_reading(D, pairs.x_src, device))[0]
    G.train(was_training)
    res = {'pairs': len(pairs), 'split': pairs.split, 'model': {}, 'baseline': {}}
    if pairs.truth is not None:
        res['model'].update(image_scores(y, pairs.truth))
        res['baseline'].update(image_scores(pairs.x_src, pairs.truth))
        res['edit_error_reduction'] = 1 - res['model']['l1'] / max(res['baseline']['l1'], 1e-12)
        if y_read is not None:
            r = res['source_read_by_critic'] = image_scores(y_read, pairs.truth)
            r['edit_error_reduction'] = 1 - r['l1'] / max(res['baseline']['l1'], 1e-12)
    res['model']['rec_l1'] = l1(rec, pairs.x_src).mean().item()
    if attn is not None:
        res['model']['attn_mean'] = res['attn_mean'] = attn.mean().item()
    if reader is not None:
        cols = pairs.cols
        trg05 = pairs.aus_trg[:, cols] * dl.AU_MAX
        err_model = (read(reader, y)[:, cols] * dl.AU_MAX - trg05).abs()
        err_base = (read(reader, pairs.x_src)[:, cols] * dl.AU_MAX - trg05).abs()
        if pairs.truth is not None:      # the reader's own error where the answer is exact
            err_floor = (read(reader, pairs.truth)[:, cols] * dl.AU_MAX - trg05).abs()
        else:                            # ... or on real images with their labels
            err_floor = (read(reader, pairs.x_src)[:, cols] - pairs.aus_src[:, cols]).abs() * dl.AU_MAX
        res['model']['au_mae'] = res['au_mae'] = err_model.mean().item()
        res['baseline']['au_mae'] = err_base.mean().item()
        res['au_mae_floor'] = err_floor.mean().item()
        res['per_au'] = {name: {'model': m, 'baseline': b, 'floor': f} for name, m, b, f in zip(
            pairs.label_names, err_model.mean(0).tolist(), err_base.mean(0).tolist(), err_floor.mean(0).tolist())}
    return res, y, attn


def format_table(res):
    """The results as a plain-text table."""
    lines = []
    if 'edit_error_reduction' in res:
        lines += [f'{"":12s} {"L1":>8s} {"PSNR":>8s} {"SSIM":>8s} {"AU MAE":>8s}']
        for who in ('model', 'baseline'):
            r = res[who]
            lines.append(f'{who:12s} {r["l1"]:8.4f} {r["psnr"]:8.2f} {r["ssim"]:8.4f} {r.get("au_mae", float("nan")):8.3f}')
        lines.append(f'edit_error_reduction {res["edit_error_reduction"]:.3f}   (1 - model L1 / baseline L1)')
        if 'source_read_by_critic' in res:
            r = res['source_read_by_critic']
            lines.append(f'  with the sources\' AUs read by the critic (as test mode): L1 {r["l1"]:.4f}, '
                         f'edit_error_reduction {r["edit_error_reduction"]:.3f}')
    if 'au_mae' in res:
        lines.append(f'au_mae {res["au_mae"]:.3f}   au_mae_floor {res["au_mae_floor"]:.3f}   '
                     f'baseline au_mae {res["baseline"]["au_mae"]:.3f}   (AU units 0-5)')
    extra = f'cycle reconstruction L1 {res["model"]["rec_l1"]:.4f}'
    if 'attn_mean' in res:
        extra += f'   mean attention {res["attn_mean"]:.3f}'
    lines.append(extra)
    if 'per_au' in res:
        lines.append(f'AU MAE per AU {"model":>7s}{"base":>7s}{"floor":>7s}')
        for name, v in res['per_au'].items():
            lines.append(f'  {name:<11s}{v["model"]:7.2f}{v["baseline"]:7.2f}{v["floor"]:7.2f}')
    return '\n'.join(lines)


def comparison_grid(pairs, y, attn, n=12, per_column=6):
    """source | target rendering | output | attention (or source | output | attention | cycle)."""
    n = min(n, len(pairs))
    cells = []
    for i in range(n):
        row = [vis.to_uint8(pairs.x_src[i])]
        if pairs.truth is not None:
            row.append(vis.to_uint8(pairs.truth[i]))
        row.append(vis.to_uint8(y[i]))
        row.append(vis.to_uint8(attn[i] * 2 - 1) if attn is not None else None)
        cells.append(row)
    blocks = [cells[s:s + per_column] for s in range(0, n, per_column)]
    rows = [sum((b[r] if r < len(b) else [None] * len(cells[0]) for b in blocks), [])
            for r in range(per_column)]
    img = vis.grid(rows)
    titles = ['source'] + (['truth'] if pairs.truth is not None else []) + ['output', 'attention']
    return vis.stack([vis.label_row(titles * len(blocks), y.shape[-1]), img])


# --------------------------------------------------------------------------- entry points

def data_of_checkpoint(cfg, ckpt_cfg):
    """(image_dir, attr_path) of the data to evaluate on: the flags when given, else the checkpoint's."""
    image_dir = cfg.image_dir or ckpt_cfg.get('image_dir')
    attr_path = cfg.attr_path or ckpt_cfg.get('attr_path')
    if not image_dir or not attr_path or not os.path.exists(attr_path):
        raise FileNotFoundError(f'eval mode needs the data the model was trained on ({attr_path}); '
                                f'give --image_dir and --attr_path')
    return image_dir, attr_path


def run(cfg):
    """--mode eval: score the newest checkpoint of the run; table on the console,
    JSON and a comparison grid in results/."""
    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    models_dir, out_dir = mode_folder(cfg, 'models'), mode_folder(cfg, 'results')
    G, D, ckpt_cfg, label_names, path = load_models(models_dir, device)
    image_dir, attr_path = data_of_checkpoint(cfg, ckpt_cfg)
    size = ckpt_cfg['image_size']
    train_set = dl.au_dataset(image_dir, attr_path, size, 'train')
    reader = load_or_fit_reader(train_set, device, amp)
    pairs = EvalPairs(image_dir, attr_path, label_names, size, cfg.eval_pairs, cfg.seed)
    res, y, attn = score(G, pairs, reader, device, amp, D)
    it = next(i for i, p in checkpoint.list_checkpoints(models_dir) if p == path)
    res.update({'checkpoint': path, 'iteration': it, 'image_size': size, 'data': attr_path})
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f'eval_{it:08d}.json')
    with open(json_path, 'w') as f:
        json.dump(res, f, indent=1)
    grid_path = vis.save_png(comparison_grid(pairs, y, attn), os.path.join(out_dir, f'eval_{it:08d}_grid.png'))
    print(f'evaluation of {path} on {len(pairs)} (source, target) pairs of the {pairs.split} split:')
    print(format_table(res))
    print(f'wrote {json_path} and {grid_path}')
    return res


class TrainingProbe:
    """--eval_step: the same figures on a small fixed subset during training, to
    TensorBoard (eval/...) and to results/eval_curve.jsonl."""

    def __init__(self, cfg, solver, num_pairs=96):
        self.cfg, self.num_pairs = cfg, num_pairs
        self.pairs = EvalPairs(cfg.image_dir, cfg.attr_path, solver.label_names, cfg.image_size, num_pairs, cfg.seed)
        full_train = dl.au_dataset(cfg.image_dir, cfg.attr_path, cfg.image_size, 'train')
        self.reader = load_or_fit_reader(full_train, solver.device, solver.amp_dtype)
        self.curve_path = os.path.join(solver.dirs['results'], 'eval_curve.jsonl')

    def __call__(self, solver, it):
        res, _, _ = score(solver.G_eval, self.pairs, self.reader, solver.device, solver.amp_dtype,
                          solver.D)
        flat = flatten(res)
        for k, v in flat.items():
            if isinstance(v, float) and not k.startswith('per_au'):
                solver.writer.add_scalar(f'eval/{k}', v, it)
        with open(self.curve_path, 'a') as f:
            f.write(json.dumps({'iteration': it, **{k: v for k, v in flat.items() if not k.startswith('per_au')}}) + '\n')
        return res


def flatten(d, prefix=''):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def curve_table(path, keys=('edit_error_reduction', 'model.l1', 'model.ssim', 'au_mae', 'au_mae_floor',
                            'attn_mean', 'model.rec_l1')):
    """results/eval_curve.jsonl -> a Markdown table (for EVALUATION.md)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    keys = [k for k in keys if any(k in r for r in rows)]
    lines = ['| iteration | ' + ' | '.join(keys) + ' |', '|---' * (len(keys) + 1) + '|']
    for r in rows:
        lines.append(f'| {r["iteration"]} | ' + ' | '.join(
            f'{r[k]:.3f}' if isinstance(r.get(k), float) else '-' for k in keys) + ' |')
    return '\n'.join(lines)


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description='Print a learning curve (results/eval_curve.jsonl) as a table.')
    parser.add_argument('curve', help='path of an eval_curve.jsonl written by --eval_step')
    print(curve_table(parser.parse_args().curve))
