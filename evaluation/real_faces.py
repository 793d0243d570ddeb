"""GANimation's figures on real faces, which have no true rendering: a prepared dataset's held-out people
(test_ids.csv), or a folder of photos (--test_images_dir). Each face is edited to a fixed set of targets the
AU estimate can read: the seven emotion prototypes at 4, single AUs at 4 (AU01, AU02, AU04, AU12, and AU25
with AU26: one blendshape), the other AUs the face's own, and the face's own AUs. Scored by

- AU realisation: editing/au_reader.py's MediaPipe estimate, the reader that labels prepared data, reads
  every edit; its error against the target, beside the same for the unedited face (the do-nothing
  baseline), per AU and over the AUs it reads well (au_reader.READ_WELL). An edit in which it finds no face
  scores the largest error its target allows, and the share read is reported;
- identity (evaluation/identity.py, dlib's recogniser): the distance of each edit from the input face, its
  mean and the share judged the same person (< 0.6);
- reconstruction: the edit to the face's own AUs against the input (L1 and PSNR, at the model's size);
- a grid of faces x targets, the attention masks under the edits.

A face cut from a photo is read and compared in the photo, its edit pasted back as test mode pastes it; an
aligned crop is enlarged to 256 px and read with its framing's landmarks (no detector: a garbled edit is
read where the face should be).
"""
import os

import numpy as np
import torch

import data_loader as dl
import synthetic_faces as sf
from editing import au_reader
from editing import framing as fr
from editing import photos, video
from evaluation import identity, metrics
from utils import visualize as vis
from utils.errors import FlagError, UserError

INTENSITY = 4.0                                    # the targets' AU intensity (0-5)
EMOTIONS = sf.EMOTIONS[:7]                         # GANmut's seven, neutral to anger
SINGLE_AUS = ('AU01', 'AU02', 'AU04', 'AU12', 'AU25')
TOGETHER = {'AU25': ('AU25', 'AU26')}              # asked together: the estimate reads both from jawOpen
NUM_TARGETS = len(EMOTIONS) + len(SINGLE_AUS) + 1
CROP_READ_SIDE = 256                               # an aligned crop is enlarged to this side to be read


def targets_of(own):
    """(target names, (N, T, 17) targets in 0-5) for faces whose own AUs are `own` (N, 17) in 0-5."""
    names, rows = [], []
    for e in EMOTIONS:
        names.append(e)
        rows.append(np.broadcast_to(sf.emotion_prototype(e, INTENSITY), own.shape))
    for au in SINGLE_AUS:
        t = own.copy()
        t[:, [sf.AU_INDEX[a] for a in TOGETHER.get(au, (au,))]] = INTENSITY
        names.append(f'{au}=4')
        rows.append(t)
    names.append('own')
    rows.append(own)
    return names, np.stack(rows, 1).astype(np.float64)


def framing_of_data(attr_path, default):
    """The framing of a dataset's crops: its framing.json (written by --mode prepare), else `default`."""
    path = os.path.join(os.path.dirname(os.path.abspath(attr_path)), 'framing.json')
    return fr.framing_from(path, 'framing.json') if os.path.isfile(path) else default


class RealFaces:
    """The faces to edit: `faces` (editing.photos.Face: name and crop at the model's size, and the photo it
    was cut from, if any), their own AUs `own` (N, 17) in 0-5, the framing of the crops, and where they
    come from (`split`: 'test' for held-out people, 'all' for a dataset without a split, 'photos')."""

    def __init__(self, faces, own, framing, split, source):
        self.faces, self.own, self.framing, self.split, self.source = faces, own, framing, split, source
        self.crops = np.stack([f.crop for f in faces])
        self.x_src = dl.to_tensor(self.crops)
        self.names = [f.name for f in faces]

    def __len__(self):
        return len(self.faces)

    def view(self, i, crop):
        """(pixels, landmarks) where face i, shown as `crop` (S, S, 3) uint8, is read and compared: its
        photo with the crop pasted back, or the crop enlarged, with the framing's points."""
        face = self.faces[i]
        if face.photo is not None and face.points is not None:
            return fr.paste(face.photo.pixels, [(face.matrix, face.crop, crop)]), np.asarray(face.points)
        big = identity.enlarged(crop, CROP_READ_SIDE)
        return big, self.framing.array * CROP_READ_SIDE

    @classmethod
    def of_dataset(cls, image_dir, attr_path, size, framing, num_faces, seed=0):
        """`num_faces` seeded faces of the held-out split (test_ids.csv; every row without one), with
        their labelled AUs."""
        full = dl.au_dataset(image_dir, attr_path, size, 'test')
        split = 'test' if dl._split_file(attr_path, 'test') else 'all'
        if split == 'all':
            print(f'note: {attr_path} has no test_ids.csv beside it: faces are drawn from every row, people the '
                  f'model may have seen (--mode prepare writes the split)')
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(full), min(len(full), max(1, num_faces)), replace=False))
        index, images = dl.load_readable(full, pick)
        own = np.zeros((len(index), sf.NUM_AUS))
        for k, name in enumerate(full.label_names):
            if name in sf.AU_INDEX:
                own[:, sf.AU_INDEX[name]] = full.labels[torch.as_tensor(index), k].numpy() * dl.AU_MAX
        faces = [photos.Face(os.path.splitext(full.files[i])[0], im) for i, im in zip(index, images)]
        return cls(faces, own, framing, split, attr_path)

    @classmethod
    def of_photos(cls, cfg, size, framing, reader):
        """The faces of --test_images_dir: found and cut out as test mode does (--detect_faces true or
        --face_box), else aligned crops in `framing`; their own AUs read by the estimate `reader` (0 where it
        reads none, and said; all 0 without a reader)."""
        if video.is_video(cfg.test_images_dir):
            raise FlagError(f'--test_images_dir {cfg.test_images_dir}: eval mode scores photos and face crops, '
                            f'not a video')
        if photos.photo_mode(cfg):
            faces = photos.photo_faces(cfg, size, framing)
        else:
            faces = []
            for f in photos.image_files(cfg.test_images_dir):
                photos.note_unaligned(f, size)
                faces.append(photos.Face(os.path.splitext(os.path.basename(f))[0], dl.load_image(f, size)))
        made = cls(faces, np.zeros((len(faces), sf.NUM_AUS)), framing, 'photos', cfg.test_images_dir)
        if reader is None:
            return made
        read, ok = read_aus(reader, [made.view(i, made.crops[i]) for i in range(len(made))])
        unread = [name for name, got in zip(made.names, ok) if not got]
        if unread:
            print(f'the AU estimate read no face in {", ".join(unread)}: its own AUs are taken as 0')
        made.own = read
        return made


def au_error(read, read_ok, targets):
    """|AUs read - target| in 0-5; where no face was read, the largest error the target allows (max(t, 5 - t)):
    an edit the estimate cannot read as a face realises nothing, and cannot score well on a target of 0."""
    worst = np.maximum(targets, dl.AU_MAX - targets)
    return np.where(read_ok[..., None], np.abs(read - targets), worst)


def read_aus(reader, views):
    """((V, 17) AUs in 0-5, (V,) bool read) of (pixels, landmarks) views; a view read as no face: 0, False."""
    out, ok = np.zeros((len(views), sf.NUM_AUS)), np.zeros(len(views), bool)
    for v, (pixels, points) in enumerate(views):
        got = reader.face(pixels, points)
        if got is not None:
            out[v], ok[v] = got[0], True
    return out, ok


@torch.no_grad()
def edit(G, x, conds, cond_src, device, amp_dtype=None, batch_size=64):
    """x (N, 3, S, S), conds (N, T, C) in [0, 1], cond_src (N, C) -> edits (N, T, 3, S, S) and attention
    masks (N, T, 1, S, S) or None, float32 on the CPU."""
    n, t = conds.shape[:2]
    xs, cs, srcs = x.repeat_interleave(t, 0), conds.flatten(0, 1), cond_src.repeat_interleave(t, 0)
    outs, masks = [], []
    for s in range(0, n * t, batch_size):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            y, attn, _ = G(xs[s:s + batch_size].to(device), cs[s:s + batch_size].to(device),
                           srcs[s:s + batch_size].to(device))
        outs.append(y.float().cpu())
        if attn is not None:
            masks.append(attn.float().cpu())
    y = torch.cat(outs).view(n, t, *x.shape[1:])
    return y, (torch.cat(masks).view(n, t, 1, *x.shape[2:]) if masks else None)


def model_columns(label_names):
    """Indices of the model's condition names among the 17 AUs (a model of other labels is refused)."""
    unknown = [n for n in label_names if n not in sf.AU_INDEX]
    if unknown:
        raise UserError(f'scoring edits of real faces needs a model conditioned on FACS AUs ({", ".join(sf.AU_NAMES)});'
                        f' this one has {", ".join(unknown)}')
    return [sf.AU_INDEX[n] for n in label_names]


def identity_distances(ident, faces, edits):
    """(N, T) distances of each edit (N, T, S, S, 3) uint8 from its input face, compared where the faces are
    read (RealFaces.view)."""
    out = np.zeros(edits.shape[:2])
    for i in range(len(faces)):
        pixels, points = faces.view(i, faces.crops[i])
        out[i] = ident.distances(pixels, [faces.view(i, e)[0] for e in edits[i]], points)
    return out


def score(G, faces, reader, ident, label_names, device, amp_dtype=None):
    """All figures -> (results dict, target names, edits (N, T, 3, S, S), masks or None). `reader`: an open
    au_reader.Reader; `ident`: an identity.Identity, or None (the identity figure is left out)."""
    cols = model_columns(label_names)
    names, targets = targets_of(faces.own)
    conds = torch.from_numpy(targets[:, :, cols] / dl.AU_MAX).float()
    cond_src = torch.from_numpy(faces.own[:, cols] / dl.AU_MAX).float()
    was_training = G.training
    G.eval()
    y, attn = edit(G, faces.x_src, conds, cond_src, device, amp_dtype)
    G.train(was_training)
    y8 = vis.to_uint8(y)
    n, t = targets.shape[:2]
    read_in, read_in_ok = read_aus(reader, [faces.view(i, faces.crops[i]) for i in range(n)])
    read_y, read_ok = read_aus(reader, [faces.view(i, y8[i, k]) for i in range(n) for k in range(t)])
    read_y, read_ok = read_y.reshape(n, t, -1), read_ok.reshape(n, t)
    err_model = au_error(read_y, read_ok, targets)           # (N, T, 17)
    err_base = au_error(read_in[:, None], read_in_ok[:, None], targets)
    scored = [c for c in cols if sf.AU_NAMES[c] in au_reader.READ_WELL]
    res = {'model_kind': 'ganimation', 'faces': n, 'split': faces.split, 'source': faces.source,
           'targets': names, 'target_intensity': INTENSITY,
           'au_reader': 'MediaPipe blendshape estimate (editing/au_reader.py), the reader that labels prepared data',
           'aus_scored': [sf.AU_NAMES[c] for c in scored], 'edits_read': float(read_ok.mean()),
           'inputs_read': float(read_in_ok.mean()), 'model': {}, 'baseline': {}}
    if scored:
        res['model']['au_mae'] = res['au_mae'] = float(err_model[:, :, scored].mean())
        res['baseline']['au_mae'] = float(err_base[:, :, scored].mean())
        if faces.split != 'photos':   # the estimate on the unedited crops against their labels (read in the photos)
            res['au_mae_floor'] = float(au_error(read_in, read_in_ok, faces.own)[:, scored].mean())
    res['per_au'] = {sf.AU_NAMES[c]: {'model': float(err_model[:, :, c].mean()), 'baseline': float(err_base[:, :, c].mean()),
                                      'read_well': c in scored} for c in cols}
    per = {}
    for k, name in enumerate(names):
        p = per[name] = {}
        if scored:
            p.update(au_mae=float(err_model[:, k, scored].mean()), baseline_au_mae=float(err_base[:, k, scored].mean()))
        if name in EMOTIONS and name != 'neutral' and not sf.emotion_prototype(name, INTENSITY)[cols].any():
            p['none_of_its_aus'] = True    # a prototype the model has none of the AUs of: asked as neutral
        if name.endswith('=4'):      # the asked AU as read: on the edits and on the inputs
            asked = sf.AU_INDEX[name[:-2]]
            p.update(asked_read=float(read_y[:, k, asked].mean()), asked_read_input=float(read_in[:, asked].mean()))
    x_rec = y[:, names.index('own')]
    res['reconstruction'] = {'l1': metrics.l1(x_rec, faces.x_src).mean().item(),
                             'psnr': metrics.psnr(x_rec, faces.x_src).mean().item()}
    if attn is not None:
        res['model']['attn_mean'] = res['attn_mean'] = attn.mean().item()
    if ident is not None:
        res['identity'], per_name = identity.figures(identity_distances(ident, faces, y8), names)
        for name in names:
            per[name].update(per_name[name])
    else:
        res['identity_skipped'] = identity.missing_message()
    res['per_target'] = per
    return res, names, y, attn


def format_table(res):
    """The results as a plain-text table."""
    lines = [f'AUs read by {res["au_reader"]}; identity: '
             + ('dlib\'s face recogniser, distance of each edit from its input (< 0.6: the same person)'
                if 'identity' in res else 'skipped')]
    head = f'{"target":<10s} {"AU err":>7s} {"base":>7s} {"asked AU read (input)":>22s} {"identity":>9s} {"same":>6s}'
    lines.append(head)
    for name, p in res['per_target'].items():
        asked = f'{p["asked_read"]:.2f} ({p["asked_read_input"]:.2f})' if 'asked_read' in p else '-'
        lines.append(f'{name + "*" * p.get("none_of_its_aus", False):<10s} {p.get("au_mae", float("nan")):7.3f} {p.get("baseline_au_mae", float("nan")):7.3f} '
                     f'{asked:>22s} ' + (f'{p["identity_distance"]:9.3f} {p["identity_same_person_share"]:6.2f}'
                                          if 'identity_distance' in p else f'{"-":>9s} {"-":>6s}'))
    if any(p.get('none_of_its_aus') for p in res['per_target'].values()):
        lines.append('* none of the prototype\'s AUs is one of the model\'s: the model is asked for a neutral face')
    if 'au_mae' in res:
        lines.append(f'au_mae {res["au_mae"]:.3f}   baseline au_mae {res["baseline"]["au_mae"]:.3f}   (AU units 0-5, '
                     f'over {" ".join(res["aus_scored"])}; edits read {100 * res["edits_read"]:.0f}%)')
        if 'au_mae_floor' in res:
            lines.append(f'au_mae_floor {res["au_mae_floor"]:.3f}   (the estimate on the unedited crops at this size '
                         f'against their labels)')
    if 'identity' in res:
        i = res['identity']
        lines.append(f'identity distance {i["distance"]:.3f}   same person {100 * i["same_person_share"]:.0f}%')
    else:
        lines.append(res['identity_skipped'])
    r = res['reconstruction']
    lines.append(f'reconstruction (own AUs) L1 {r["l1"]:.4f}  PSNR {r["psnr"]:.2f} dB'
                 + (f'   mean attention {res["attn_mean"]:.3f}' if 'attn_mean' in res else ''))
    lines.append(f'AU error per AU {"model":>7s}{"base":>7s}')
    for name, v in res['per_au'].items():
        lines.append(f'  {name:<13s}{v["model"]:7.2f}{v["baseline"]:7.2f}' + ('' if v['read_well'] else '  (read poorly)'))
    return '\n'.join(lines)


def grid(faces, names, y, attn, n=6):
    """Per face: input | its edit to each target, and under the edits their attention masks."""
    n = min(n, len(faces))
    rows = []
    for i in range(n):
        rows.append([faces.crops[i]] + list(vis.to_uint8(y[i])))
        if attn is not None:
            rows.append([None] + list(vis.to_uint8(attn[i] * 2 - 1)))
    return vis.titled_grid(['input'] + names, rows, y.shape[-1], height=max(16, y.shape[-1] // 3),
                           size=max(7, min(11, y.shape[-1] // 5)))


class RealAUScorer:
    """GANimation's scorer on real faces, for evaluation.runner (the dataset's held-out faces, or photos)."""

    def __init__(self, faces, label_names, device, amp_dtype):
        self.faces, self.label_names, self.device, self.amp_dtype = faces, list(label_names), device, amp_dtype
        model_columns(self.label_names)
        self.ident = identity.open_or_say()

    @staticmethod
    def needs_reader(why):
        if not au_reader.available():
            raise UserError(f'{why} reads AUs with the AU estimate, an optional dependency: {au_reader.INSTALL_HINT}')

    @classmethod
    def of_dataset(cls, image_dir, attr_path, label_names, size, num_pairs, seed, device, amp_dtype, framing):
        cls.needs_reader('scoring edits of real faces')
        faces = RealFaces.of_dataset(image_dir, attr_path, size, framing, max(1, num_pairs // NUM_TARGETS), seed)
        return cls(faces, label_names, device, amp_dtype)

    @classmethod
    def of_photos(cls, cfg, trained, size, framing, device, amp_dtype):
        cls.needs_reader('--mode eval on photos')
        with au_reader.Reader('--mode eval') as reader:
            faces = RealFaces.of_photos(cfg, size, framing, reader)
        return cls(faces, trained.label_names, device, amp_dtype)

    def score(self, G, D=None, space=None):
        """(results, the grid as a function: drawn only when it is saved)."""
        with au_reader.Reader('--mode eval') as reader:
            res, names, y, attn = score(G, self.faces, reader, self.ident, self.label_names, self.device,
                                        self.amp_dtype)
        return res, lambda: grid(self.faces, names, y, attn)

    def heading(self, trained):
        what = {'test': 'held-out faces (people not trained on)', 'all': 'faces', 'photos': 'faces of the photos'}
        return f'on {len(self.faces)} {what[self.faces.split]} of {self.faces.source} x {NUM_TARGETS} targets'

    @staticmethod
    def about(trained, space):
        return {}

    table = staticmethod(format_table)

    @staticmethod
    def curve(res, flat):
        """The learning curve's entries: the overall figures, and each single-AU target's asked AU as read."""
        out = {k: v for k, v in flat.items() if isinstance(v, float) and not k.startswith(('per_au', 'per_target'))}
        out.update({f'asked_read/{name}': p['asked_read'] for name, p in res['per_target'].items() if 'asked_read' in p})
        return out
