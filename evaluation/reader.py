"""The separate reader that scores edits: a small CNN trained on the training split to read AU
intensities or the emotion from a face; never the critic, which the generator was trained to
satisfy and can fool. Cached beside the data, keyed by the images, labels, size and this code."""
import hashlib
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data_loader as dl
from solver import images_to_float
from utils import checkpoint
from utils.records import STAGES

# v2: 600 iterations instead of 1,500 (the demo's ten minutes; on 32 px synthetic faces its floor was
# 0.340 against 0.324, in 57 s against 161 s on 2 cores: docs/notebook.md)
READER_VERSION = 2


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


def fit_reader(train_set, device, iters=600, batch_size=64, lr=2e-3, seed=0, amp_dtype=None, log=print):
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
        if log and (it + 1) % 200 == 0:
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
    with STAGES.timed(f'{"AU" if kind == "au" else kind} reader'):
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
