"""Evaluation of GANmut.

For held-out faces, every emotion is generated at its axis (linear, strength
0.9) or mean (gaussian). Then:

- an emotion classifier trained separately on the training split (evaluation.reader.Reader
  kind 'emotion', cached beside the data like the AU reader; never the critic,
  which G was trained to please) reads the emotion of each edit: per-emotion
  accuracy and the confusion matrix (rows: target emotion, columns: emotion read).
  The do-nothing baseline (output = input) is scored the same way, and the
  classifier's own accuracy on the true renderings (synthetic data) and on the
  held-out images with their labels are the reference for how far it can be trusted;
- identity preservation, on the synthetic faces: L1 (and PSNR, SSIM) between the
  edit and the true rendering of the same identity with that emotion's prototype
  AUs (at 0.9 x 5 = 4.5), beside the do-nothing baseline; on real faces, which have
  no true rendering, dlib's face recogniser (evaluation/identity.py): the distance
  of each edit from its input face, and the share judged the same person.

Real faces are a dataset's held-out people or the faces of --test_images_dir (photos
read as test mode reads them; each edit pasted back, compared in the photo).

    python main.py --mode eval --outputs_dir outputs/demo_ganmut
"""
import json
import os

import numpy as np
import torch

import data_loader as dl
import synthetic_faces as sf
from editing import photos
from evaluation import identity, metrics, real_faces
from evaluation.reader import load_or_fit_reader, read
from ganmut import solver as gs
from ganmut.space import load_space
from utils import visualize as vis
from utils.errors import MissingInput

STRENGTH = 0.9   # linear: the codes are 0.9 * axis; the truth has the prototype at 0.9 * 5 AU units


class EmotionEvalFaces:
    """A fixed, seeded set of held-out faces, and (synthetic data) the true rendering of each
    face's identity with each emotion's prototype: `truth` (N, E, 3, H, W) or None."""

    def __init__(self, image_dir, attr_path, names, size, num_faces, seed=0, faces=None):
        self.names = list(names)
        self.truth = None
        if faces is not None:          # faces of photos (editing.photos.Face): no labels, no truth
            self.split, self.files, self.labels = 'photos', [f.name for f in faces], None
            self.x_src = dl.to_tensor(np.stack([f.crop for f in faces]))
            return
        held_out = gs.held_out_csv(attr_path)
        self.split = 'test' if held_out else 'train'
        ds = gs.emotion_set(image_dir, held_out or attr_path, size, len(names))
        rng = np.random.default_rng(seed)
        n = min(len(ds), max(1, num_faces))
        self.index, images = dl.load_readable(ds, np.sort(rng.choice(len(ds), n, replace=False)))
        self.files = [ds.files[i] for i in self.index]
        self.labels = ds.labels[torch.as_tensor(self.index)].clone()
        self.x_src = dl.to_tensor(np.stack(images))
        root = dl.synthetic_root(attr_path)
        if root and all(n in sf.EMOTION_PROTOTYPES for n in names):
            meta = sf.read_meta(root)
            with open(os.path.join(root, 'dataset.json')) as f:
                native = json.load(f)['image_size']
            protos = [sf.emotion_prototype(n, STRENGTH * dl.AU_MAX) for n in names]
            self.truth = torch.stack([dl.to_tensor(np.stack([metrics.render_like_dataset(meta[f][0], p, native, size)
                                                            for p in protos])) for f in self.files])

    def __len__(self):
        return len(self.files)


@torch.no_grad()
def edit_codes(space, strength=STRENGTH):
    """(E, dim): each emotion's axis at `strength` (linear) or its mean (gaussian)."""
    e = torch.arange(space.num_emotions, device=next(space.parameters()).device)
    intensity = strength if hasattr(space, 'axes') else 1.0
    return space.emotion_code(e, torch.full((space.num_emotions,), intensity, device=e.device)).float()


@torch.no_grad()
def run_edits(G, space, faces, device, amp_dtype=None, batch_size=64):
    """(N, E, 3, H, W) float32 CPU: every face at every emotion's code."""
    codes = edit_codes(space)
    E = codes.shape[0]
    x = faces.x_src.repeat_interleave(E, 0)
    c = codes.repeat(len(faces), 1)
    outs = []
    for s in range(0, x.shape[0], batch_size):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            y, _, _ = G(x[s:s + batch_size].to(device), c[s:s + batch_size].to(device))
        outs.append(y.float().cpu())
    return torch.cat(outs).view(len(faces), E, *faces.x_src.shape[1:])


def confusion(target, read, num):
    """(num, num) counts: rows the target emotion, columns the emotion read."""
    idx = target.long().reshape(-1) * num + read.long().reshape(-1)
    return torch.bincount(idx, minlength=num * num)[:num * num].view(num, num)


def score(G, space, faces, reader, device, amp_dtype=None, ident=None, views=None):
    """All figures -> (results dict, edits (N, E, 3, H, W)). `reader`: the emotion reader or None; `ident`
    (an identity.Identity) with `views` (a real_faces.RealFaces of the same faces): the identity figure of
    real faces."""
    was_training = G.training
    G.eval()
    y = run_edits(G, space, faces, device, amp_dtype)
    G.train(was_training)
    N, E = y.shape[:2]
    names = faces.names
    target = torch.arange(E).expand(N, E)
    res = {'model_kind': 'ganmut', 'faces': N, 'split': faces.split, 'strength': STRENGTH,
           'codes': 'axis x strength' if hasattr(space, 'axes') else 'gaussian means', 'emotions': names,
           'model': {}, 'baseline': {}}
    per = {n: {} for n in names}
    if reader is not None:
        read_y = read(reader, y.flatten(0, 1)).argmax(1).view(N, E)
        read_src = read(reader, faces.x_src).argmax(1)
        hit = (read_y == target).float()
        base_hit = (read_src.unsqueeze(1) == target).float()
        res['model']['emotion_accuracy'] = res['emotion_accuracy'] = hit.mean().item()
        res['baseline']['emotion_accuracy'] = base_hit.mean().item()
        if faces.labels is not None:
            res['reader_accuracy_held_out'] = (read_src == faces.labels).float().mean().item()
        res['confusion'] = {'rows': 'target emotion', 'columns': 'emotion read by the classifier',
                            'labels': names, 'model': confusion(target, read_y, E).tolist()}
        for e, n in enumerate(names):
            per[n].update(accuracy=hit[:, e].mean().item(), baseline_accuracy=base_hit[:, e].mean().item())
        if faces.truth is not None:
            read_truth = read(reader, faces.truth.flatten(0, 1)).argmax(1).view(N, E)
            truth_hit = (read_truth == target).float()
            res['reader_accuracy_truth'] = truth_hit.mean().item()
            res['confusion']['truth'] = confusion(target, read_truth, E).tolist()
            for e, n in enumerate(names):
                per[n]['reader_accuracy_truth'] = truth_hit[:, e].mean().item()
    if faces.truth is not None:
        truth = faces.truth.flatten(0, 1)
        src = faces.x_src.repeat_interleave(E, 0)
        metrics.against_truth(res, y.flatten(0, 1), src, truth)
        res['identity_l1'], res['identity_l1_baseline'] = res['model']['l1'], res['baseline']['l1']
        l1_model = metrics.l1(y.flatten(0, 1), truth).view(N, E).mean(0)
        l1_base = metrics.l1(src, truth).view(N, E).mean(0)
        for e, n in enumerate(names):
            per[n].update(l1=l1_model[e].item(), baseline_l1=l1_base[e].item())
    if ident is not None:
        res['identity'], per_name = identity.figures(real_faces.identity_distances(ident, views, vis.to_uint8(y)), names)
        for n in names:
            per[n].update(per_name[n])
    elif views is not None:
        res['identity_skipped'] = identity.missing_message()
    res['per_emotion'] = per
    return res, y


def format_table(res):
    names = res['emotions']
    lines = []
    has_truth = 'edit_error_reduction' in res
    cols = [('accuracy', 'acc'), ('baseline_accuracy', 'base acc'), ('reader_accuracy_truth', 'reader@truth'),
            ('l1', 'L1'), ('baseline_l1', 'base L1'), ('identity_distance', 'identity'),
            ('identity_same_person_share', 'same person')]
    cols = [(k, t) for k, t in cols if any(k in res['per_emotion'][n] for n in names)]
    width = max(8, max(len(n) for n in names))
    lines.append(f'{"emotion":<{width}} ' + ' '.join(f'{t:>12s}' for _, t in cols))
    for n in names:
        v = res['per_emotion'][n]
        lines.append(f'{n:<{width}} ' + ' '.join(f'{v[k]:12.3f}' if k in v else f'{"-":>12s}' for k, _ in cols))
    if 'emotion_accuracy' in res:
        own = ([f'{res["reader_accuracy_truth"]:.3f} on the true renderings'] if 'reader_accuracy_truth' in res
               else []) + ([f'{res["reader_accuracy_held_out"]:.3f} on the held-out images']
                           if 'reader_accuracy_held_out' in res else [])
        lines.append(f'emotion accuracy {res["emotion_accuracy"]:.3f} (do-nothing baseline '
                     f'{res["baseline"]["emotion_accuracy"]:.3f})'
                     + (f'; the classifier\'s own accuracy: {", ".join(own)}' if own else ''))
    if 'identity' in res:
        i = res['identity']
        lines.append(f'identity (dlib, edit vs input): distance {i["distance"]:.3f}, same person '
                     f'{100 * i["same_person_share"]:.0f}% (< {i["threshold"]})')
    elif 'identity_skipped' in res:
        lines.append(res['identity_skipped'])
    if has_truth:
        m, b = res['model'], res['baseline']
        lines.append(f'identity vs the true rendering: L1 {m["l1"]:.4f} (baseline {b["l1"]:.4f}), '
                     f'PSNR {m["psnr"]:.2f} ({b["psnr"]:.2f}), SSIM {m["ssim"]:.4f} ({b["ssim"]:.4f}); '
                     f'edit_error_reduction {res["edit_error_reduction"]:.3f}')
    if 'confusion' in res:
        short = [n[:5] for n in names]
        lines.append(f'confusion (rows: target emotion, columns: emotion read), {res["faces"]} faces per row:')
        lines.append(f'{"":<{width}} ' + ' '.join(f'{s:>5s}' for s in short))
        for n, row in zip(names, res['confusion']['model']):
            lines.append(f'{n:<{width}} ' + ' '.join(f'{v:5d}' for v in row))
    return '\n'.join(lines)


def comparison_grid(faces, y, n=6):
    """Per face: source | for each emotion (truth,) output."""
    n = min(n, len(faces))
    rows = []
    for i in range(n):
        row = [vis.to_uint8(faces.x_src[i])]
        for e in range(y.shape[1]):
            if faces.truth is not None:
                row.append(vis.to_uint8(faces.truth[i, e]))
            row.append(vis.to_uint8(y[i, e]))
        rows.append(row)
    size = y.shape[-1]
    titles = ['source\n'] + sum(([f'{name}\ntruth', f'{name}\nedit'] if faces.truth is not None else [name]
                                 for name in faces.names), [])
    return vis.titled_grid(titles, rows, size, height=max(24, size // 3), size=max(8, min(11, size // 5)))


class EmotionScorer:
    """GANmut's scorer, for evaluation.runner: held-out faces at every emotion, the separate emotion reader;
    on real faces also the identity figure."""

    def __init__(self, image_dir, attr_path, names, size, num_pairs, seed, device, amp_dtype, framing=None,
                 photo_faces=None):
        """`photo_faces`: the RealFaces of --test_images_dir (else held-out faces of the data); `framing`: the
        crops' framing when the dataset does not record one. `image_dir` None: no emotion reader."""
        self.reader = None if image_dir is None else load_or_fit_reader(
            gs.emotion_set(image_dir, attr_path, size, len(names)), device, amp_dtype)
        self.faces = EmotionEvalFaces(image_dir, attr_path, names, size, max(1, num_pairs // len(names)), seed,
                                      faces=photo_faces and photo_faces.faces)
        self.views, self.ident = photo_faces, None
        if self.faces.truth is None:
            if self.views is None:
                faces = [photos.Face(os.path.splitext(f)[0], vis.to_uint8(x)) for f, x in zip(self.faces.files,
                                                                                             self.faces.x_src)]
                self.views = real_faces.RealFaces(faces, None, real_faces.framing_of_data(attr_path, framing),
                                                  self.faces.split, attr_path)
            self.ident = identity.open_or_say()
        self.device, self.amp_dtype = device, amp_dtype

    @classmethod
    def create(cls, image_dir, attr_path, names, size, num_pairs, seed, device, amp_dtype, framing):
        return cls(image_dir, attr_path, names, size, num_pairs, seed, device, amp_dtype, framing)

    @classmethod
    def of_photos(cls, cfg, trained, size, framing, device, amp_dtype):
        """--test_images_dir in eval mode: its faces (cut out as test mode does) at every emotion; the
        emotion reader is the one of the model's training data, when that is here."""
        from evaluation.runner import data_of_checkpoint
        faces = real_faces.RealFaces.of_photos(cfg, size, framing, None)
        try:
            image_dir, attr_path = data_of_checkpoint(cfg, trained)
        except MissingInput as e:
            print(f'the emotion figures are skipped: {e}')
            image_dir = attr_path = None
        return cls(image_dir, attr_path, trained.label_names, size, 0, cfg.seed, device, amp_dtype, framing, faces)

    @staticmethod
    def networks(trained, device):
        return (*trained.networks(device), load_space(trained, device))

    def score(self, G, D, space):
        """(results, the comparison grid as a function: drawn only when it is saved)."""
        res, y = score(G, space, self.faces, self.reader, self.device, self.amp_dtype, self.ident, self.views)
        return res, lambda: comparison_grid(self.faces, y)

    def heading(self, trained):
        return (f'({trained.config["parametrization"]} space) on {len(self.faces)} faces of the {self.faces.split} '
                f'split x {len(self.faces.names)} emotions')

    @staticmethod
    def about(trained, space):
        return {'parametrization': trained.config['parametrization'], 'space': space.describe()}

    table = staticmethod(format_table)

    @staticmethod
    def curve(res, flat):
        """The learning curve's entries (results/eval_curve.jsonl; the numbers also go to TensorBoard):
        the overall figures and each emotion's accuracy."""
        out = {k: v for k, v in flat.items()
               if isinstance(v, float) and not k.startswith(('per_emotion', 'confusion', 'strength'))}
        out.update({f'accuracy/{n}': v['accuracy'] for n, v in res['per_emotion'].items() if 'accuracy' in v})
        return out
