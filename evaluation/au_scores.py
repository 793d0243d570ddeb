"""GANimation's figures on the synthetic faces: on a fixed, seeded set of (held-out source image, target AUs)
pairs, the generator's outputs against the true renderings (L1, PSNR, SSIM, and the do-nothing baseline:
edit_error_reduction = 1 - model L1 / baseline L1, > 0 when closer to the truth than not editing), and
whether the AUs were realised, read by the separate reader (its own error on the true renderings is
`au_mae_floor`). Real faces have no true rendering: evaluation/real_faces.py scores them (AUScorer.create
chooses)."""
import json
import os

import numpy as np
import torch

import data_loader as dl
import synthetic_faces as sf
from evaluation import metrics, real_faces
from evaluation.reader import load_or_fit_reader, read
from model import critic_reading
from utils import visualize as vis


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
                truth.append(metrics.render_like_dataset(meta[f][0], aus05, native, size))
            self.truth = dl.to_tensor(np.stack(truth))

    def __len__(self):
        return len(self.src)


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
    metrics.against_truth(res, y, pairs.x_src, pairs.truth)
    if y_read is not None:
        r = res['source_read_by_critic'] = metrics.image_scores(y_read, pairs.truth)
        r['edit_error_reduction'] = metrics.error_reduction(r['l1'], res['baseline']['l1'])
    res['model']['rec_l1'] = metrics.l1(rec, pairs.x_src).mean().item()
    if attn is not None:
        res['model']['attn_mean'] = res['attn_mean'] = attn.mean().item()
    if reader is not None:
        cols = pairs.cols
        trg05 = pairs.aus_trg[:, cols] * dl.AU_MAX
        err_model = (read(reader, y)[:, cols] * dl.AU_MAX - trg05).abs()
        err_base = (read(reader, pairs.x_src)[:, cols] * dl.AU_MAX - trg05).abs()
        err_floor = (read(reader, pairs.truth)[:, cols] * dl.AU_MAX - trg05).abs()   # the reader's own error
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
    titles = ['source'] + (['truth'] if pairs.truth is not None else []) + ['output', 'attention']
    return vis.titled_grid(titles * len(blocks), rows, y.shape[-1])


class AUScorer:
    """GANimation's scorer, for evaluation.runner: the fixed pairs and the separate AU reader; `create` and
    `of_photos` give real faces' scorer (evaluation/real_faces.py) where there is no true rendering."""

    def __init__(self, image_dir, attr_path, label_names, size, num_pairs, seed, device, amp_dtype):
        self.pairs = EvalPairs(image_dir, attr_path, label_names, size, num_pairs, seed)
        self.reader = load_or_fit_reader(dl.au_dataset(image_dir, attr_path, size, 'train'), device, amp_dtype)
        self.device, self.amp_dtype = device, amp_dtype

    @classmethod
    def create(cls, image_dir, attr_path, label_names, size, num_pairs, seed, device, amp_dtype, framing):
        """The synthetic faces' scorer, or real faces' (the crops taken to be in `framing` unless the
        dataset's framing.json says otherwise)."""
        if dl.synthetic_root(attr_path):
            return cls(image_dir, attr_path, label_names, size, num_pairs, seed, device, amp_dtype)
        framing = real_faces.framing_of_data(attr_path, framing)
        return real_faces.RealAUScorer.of_dataset(image_dir, attr_path, label_names, size, num_pairs, seed,
                                                  device, amp_dtype, framing)

    @staticmethod
    def of_photos(cfg, trained, size, framing, device, amp_dtype):
        """--test_images_dir in eval mode: real faces' scorer on its faces."""
        return real_faces.RealAUScorer.of_photos(cfg, trained, size, framing, device, amp_dtype)

    @staticmethod
    def networks(trained, device):
        """(G, D, None): the critic reads the sources of a --g_condition relative generator."""
        return (*trained.networks(device), None)

    def score(self, G, D, space=None):
        """(results, the comparison grid as a function: drawn only when it is saved)."""
        res, y, attn = score(G, self.pairs, self.reader, self.device, self.amp_dtype, D)
        return res, lambda: comparison_grid(self.pairs, y, attn)

    def heading(self, trained):
        return f'on {len(self.pairs)} (source, target) pairs of the {self.pairs.split} split'

    @staticmethod
    def about(trained, space):
        """What the results JSON records of the model besides its checkpoint."""
        return {}

    table = staticmethod(format_table)

    @staticmethod
    def curve(res, flat):
        """The learning curve's entries (results/eval_curve.jsonl; the numbers also go to TensorBoard)."""
        return {k: v for k, v in flat.items() if not k.startswith('per_au')}
