"""Generators and critics released by other GANimation and GANmut implementations, run as their authors ran them.

A released file is a plain state dict; its format is recognised from its keys (no flag), and its weights are
renamed into this code's Generator / Discriminator (model.py), built with the format's variant: biases on the
body's convolutions, instance norm without affine parameters, no attention, BGR channels. Running statistics
stored in the files are dropped: every author normalised each image with its own statistics (the
official code's PyTorch 0.3 instance norm did so even in eval mode), and so does model.Generator.

The formats (facts from their authors' code):

| format | generator file | critic beside it | body | heads | training crops |
|---|---|---|---|---|---|
| vipermu | `<a>-<b>-G.ckpt` | `-D.ckpt` | `main.*` | `im_reg` colour, `im_att` attention | OpenFace `-simalign -simsize 128` |
| official | `net_epoch_<N>_id_G.pth` | `_id_D.pth` | `main.*` | `img_reg` colour, `attetion_reg` attention | `face_recognition` box |
| replicate | `<epoch>_net_gen.pth` | `_net_dis.pth` | `model.*`, conv biases, no norm parameters | `color_top`, `au_top` | box, as the official code |
| ganmut_linear / ganmut_gaussian | `<iteration>-G.ckpt` | none | `main.0..19`, BGR | `main.21` (tanh), no attention | dlib's box |

The training crops give the framing (editing/framing.py: `openface` or `box`) photos are cut with.

GANimation formats take 128 px RGB in [-1, 1] and the 17 AUs of synthetic_faces.AU_NAMES divided by 5; GANmut
takes a 2-D code, and its emotion space (`axes` or `mu` / `covariance_*`) maps onto ganmut/space.py's.
"""
import os
import re

import torch

from utils.errors import CheckpointError, MissingInput

EMOTIONS = ['neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger']   # GANmut's class order

# Renames, their key prefix -> ours; `{n}` stands for a layer number. The first rule that matches is used.
RESIDUAL_MAIN = ('main.{n}.main.', 'main.{n}.body.')
FORMATS = {
    'vipermu': dict(signature=('im_reg.0.weight', 'im_att.0.weight'), model='ganimation',
                    rules=[RESIDUAL_MAIN, ('main.', 'main.'), ('im_reg.', 'color.'), ('im_att.', 'attn.')],
                    critic=('-G.ckpt', '-D.ckpt'), framing='openface'),
    'official': dict(signature=('img_reg.0.weight', 'attetion_reg.0.weight'), model='ganimation',
                     rules=[RESIDUAL_MAIN, ('main.', 'main.'), ('img_reg.', 'color.'), ('attetion_reg.', 'attn.')],
                     critic=('_id_G.pth', '_id_D.pth'), framing='box'),
    'replicate': dict(signature=('color_top.0.weight', 'au_top.0.weight'), model='ganimation',
                      rules=[('model.{n}.conv_block.', 'main.{n}.body.'), ('model.', 'main.'),
                             ('color_top.', 'color.'), ('au_top.', 'attn.')],
                      critic=('_net_gen.pth', '_net_dis.pth'), conv_bias=True, norm_affine=False, framing='box'),
    'ganmut_linear': dict(signature=('axes.weight', 'main.21.weight'), model='ganmut',
                          rules=[RESIDUAL_MAIN, ('main.21.', 'color.0.'), ('main.', 'main.')],
                          space_keys=('axes.',), channels='bgr', framing='box'),
    'ganmut_gaussian': dict(signature=('mu.weight', 'covariance_axes.weight', 'main.21.weight'), model='ganmut',
                            rules=[RESIDUAL_MAIN, ('main.21.', 'color.0.'), ('main.', 'main.')],
                            space_keys=('mu.', 'covariance_'), channels='bgr', framing='box'),
}
CRITIC_FORMATS = {
    'vipermu': dict(signature=('conv1.weight', 'conv2.weight'), rules=[('conv1.', 'src.'), ('conv2.', 'cls.')],
                    trunk='main', au_head='conv2.weight'),
    'replicate': dict(signature=('dis_top.weight', 'aus_top.weight'),
                      rules=[('model.', 'main.'), ('dis_top.', 'src.'), ('aus_top.', 'cls.')],
                      trunk='model', au_head='aus_top.weight'),
}
CRITIC_FORMATS['official'] = CRITIC_FORMATS['vipermu']
# Generator files of each format, for a folder given instead of a file.
GENERATOR_NAMES = re.compile(r'(\d+-)+G\.ckpt$|net_epoch_\d+_id_G\.pth$|\d+_net_gen\.pth$')
STATISTICS = ('.running_mean', '.running_var', '.num_batches_tracked')


def _pattern(prefix):
    return re.compile(re.escape(prefix).replace(r'\{n\}', r'(\d+)'))


def rename(key, rules, inverse=False):
    """`key` renamed by the first matching rule (theirs -> ours, or ours -> theirs with `inverse`)."""
    for theirs, ours in rules:
        src, dst = (ours, theirs) if inverse else (theirs, ours)
        m = _pattern(src).match(key)
        if m:
            return (dst.replace('{n}', m.group(1)) if m.groups() else dst) + key[m.end():]
    return key


def read_state(path):
    """The tensors of a .ckpt / .pth file on the CPU, without a `module.` prefix (multi-GPU training)."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise MissingInput(f'{path}: no such file') from None
    except Exception as e:
        raise CheckpointError(f'{path}: cannot be read as a PyTorch file ({type(e).__name__}: {e})') from None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f'{path}: not a state dict (a {type(state).__name__})')
    if all(isinstance(k, str) and k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    return state


def recognise(state, path, formats=FORMATS, what='generator'):
    """The name of the format whose signature keys `state` has; else an error listing what was looked for."""
    for name, fmt in formats.items():
        if all(k in state for k in fmt['signature']):
            return name
    looked = '; '.join(f'{name}: {", ".join(fmt["signature"])}' for name, fmt in formats.items())
    first = ', '.join(list(state)[:6])
    raise CheckpointError(f'{path} is neither a checkpoint of this code nor a released {what} of a known format '
                          f'(looked for the keys of {looked}); its first keys: {first}')


def convert(state, rules, module, path, dropped=()):
    """`state` renamed into `module`'s keys, checked key by key and shape by shape. Problems are named in
    the released file's own keys."""
    ours = {}
    for key, value in state.items():
        if key.startswith(('debug1.', 'debug2.', 'debug3.', 'debug4.')) or key.endswith(STATISTICS) \
                or key.startswith(tuple(dropped)):
            continue     # vipermu's shared copies of the body, stored running statistics, the emotion space
        ours[rename(key, rules)] = (key, value)
    own = module.state_dict()
    problems = [f'missing {rename(k, rules, inverse=True)} {tuple(v.shape)}' for k, v in own.items() if k not in ours]
    problems += [f'unexpected {theirs} {tuple(v.shape)}' for k, (theirs, v) in ours.items() if k not in own]
    problems += [f'{theirs}: {tuple(v.shape)}, expected {tuple(own[k].shape)}'
                 for k, (theirs, v) in ours.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if problems:
        raise CheckpointError(f'{path} looks like a released generator or critic but does not fit it:\n  '
                              + '\n  '.join(problems[:8]) + ('\n  ...' if len(problems) > 8 else ''))
    return {k: v.float() for k, (_, v) in ours.items()}


def generator_config(state, fmt_name):
    """The config (model.py's names) of the generator in `state`: sizes read from its weights."""
    fmt = FORMATS[fmt_name]
    first = state['main.0.weight'] if 'main.0.weight' in state else state['model.0.weight']
    blocks = {int(m.group(1)) for k in state for m in [re.match(r'(?:main|model)\.(\d+)\.(?:main|conv_block)\.', k)]
              if m}
    config = dict(model=fmt['model'], image_size=128, g_conv_dim=int(first.shape[0]), g_repeat_num=len(blocks),
                  g_conv_bias=fmt.get('conv_bias', False), g_norm_affine=fmt.get('norm_affine', True),
                  g_channels=fmt.get('channels', 'rgb'), released_format=fmt_name, face_framing=fmt['framing'])
    if fmt['model'] == 'ganmut':
        config.update(emotion_dim=int(first.shape[1]) - 3, attention='false',
                      parametrization='linear' if fmt_name == 'ganmut_linear' else 'gaussian')
    else:
        config.update(c_dim=int(first.shape[1]) - 3)
    return config


def critic_config(state, fmt_name):
    """The critic's sizes (model.py's config names) read from its weights: the trunk's stride-2 convs, the
    first one's width, and the image size the AU head's kernel implies."""
    fmt = CRITIC_FORMATS[fmt_name]
    convs = [k for k in state if re.fullmatch(fmt['trunk'] + r'\.\d+\.weight', k)]
    return dict(d_conv_dim=int(state[fmt['trunk'] + '.0.weight'].shape[0]), d_repeat_num=len(convs),
                image_size=int(state[fmt['au_head']].shape[-1]) * 2 ** len(convs))


def space_state(state, fmt_name):
    """GANmut's emotion space in ganmut/space.py's names: the linear axes (neutral has none), or the gaussian
    means (before tanh), rotation angles and principal variances."""
    if fmt_name == 'ganmut_linear':
        return {'raw_axes': state['axes.weight'].float()}
    return {'raw_means': state['mu.weight'].float(), 'theta': state['covariance_angles.weight'][0].float(),
            'raw_scales': state['covariance_axes.weight'].float()}


def critic_path(gen_path, fmt_name):
    """The critic file released beside a generator file, or None."""
    names = FORMATS[fmt_name].get('critic')
    if not names or not gen_path.endswith(names[0]):
        return None
    path = gen_path[:-len(names[0])] + names[1]
    return path if os.path.isfile(path) else None


def generator_file(path):
    """`path` itself, or the newest released generator file in folder `path` (by the numbers in its name)."""
    if os.path.isfile(path):
        return path
    found = [f for f in os.listdir(path) if GENERATOR_NAMES.search(f)]
    if not found:
        return None
    key = [tuple(int(n) for n in re.findall(r'\d+', f)) for f in found]
    return os.path.join(path, max(zip(key, found))[1])
