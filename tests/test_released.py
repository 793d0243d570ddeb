"""Released generators and critics of other implementations (released.py): each format, written here from
the facts of its authors' code with random weights, loads without a flag and computes what an independent
re-statement of that architecture's forward pass computes; a file of no known format, or one with a missing
or extra key or a wrong shape, is refused naming what is wrong."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model
from ganmut.space import load_space
from utils.errors import CheckpointError

G_BLOCKS = range(9, 15)      # the six residual blocks of the 128 px body


def _conv(sd, name, shape, bias=False, gen=None, transposed=False):
    sd[name + '.weight'] = torch.randn(*shape, generator=gen) * 0.05
    if bias:      # one per output channel: the weight's first dimension, the second for a transposed conv
        sd[name + '.bias'] = torch.randn(shape[1 if transposed else 0], generator=gen) * 0.05


def _norm(sd, name, ch, gen, statistics=True):
    """Affine instance norm with non-trivial scale and shift, and running statistics that must not be used."""
    sd[name + '.weight'] = 1 + 0.2 * torch.randn(ch, generator=gen)
    sd[name + '.bias'] = 0.2 * torch.randn(ch, generator=gen)
    if statistics:
        sd[name + '.running_mean'] = torch.randn(ch, generator=gen)
        sd[name + '.running_var'] = torch.rand(ch, generator=gen) + 0.5
        sd[name + '.num_batches_tracked'] = torch.tensor(1234)


def stargan_body(prefix='main', block='main', in_ch=20, bias=False, norm=True, statistics=True, seed=0, dim=64,
                 blocks=6):
    """The StarGAN body (128 px release: dim 64, six blocks): 7x7 conv, two 4x4 stride-2 convs, the residual
    blocks, two 4x4 transposed convs; with `norm` affine instance norms after each conv (layer numbers as
    nn.Sequential gives them)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    _conv(sd, f'{prefix}.0', (dim, in_ch, 7, 7), bias, gen)
    _conv(sd, f'{prefix}.3', (2 * dim, dim, 4, 4), bias, gen)
    _conv(sd, f'{prefix}.6', (4 * dim, 2 * dim, 4, 4), bias, gen)
    for i in range(9, 9 + blocks):
        _conv(sd, f'{prefix}.{i}.{block}.0', (4 * dim, 4 * dim, 3, 3), bias, gen)
        _conv(sd, f'{prefix}.{i}.{block}.3', (4 * dim, 4 * dim, 3, 3), bias, gen)
    up1, up2 = 9 + blocks, 12 + blocks
    _conv(sd, f'{prefix}.{up1}', (4 * dim, 2 * dim, 4, 4), bias, gen, transposed=True)
    _conv(sd, f'{prefix}.{up2}', (2 * dim, dim, 4, 4), bias, gen, transposed=True)
    if norm:
        for layer, ch in [(1, dim), (4, 2 * dim), (7, 4 * dim), (up1 + 1, 2 * dim), (up2 + 1, dim)]:
            _norm(sd, f'{prefix}.{layer}', ch, gen, statistics)
        for i in range(9, 9 + blocks):
            _norm(sd, f'{prefix}.{i}.{block}.1', 4 * dim, gen, statistics)
            _norm(sd, f'{prefix}.{i}.{block}.4', 4 * dim, gen, statistics)
    return sd, gen


def vipermu_generator(dim=64, blocks=6):
    sd, gen = stargan_body(dim=dim, blocks=blocks)
    _conv(sd, 'im_reg.0', (3, dim, 7, 7), gen=gen)
    _conv(sd, 'im_att.0', (1, dim, 7, 7), gen=gen)
    for i in range(1, 5):        # the same tensors again under the shared debug submodules
        sd[f'debug{i}.0.weight'] = sd['main.0.weight']
    return sd


def official_generator(multi_gpu=False, old_torch=False):
    sd, gen = stargan_body(seed=1)
    _conv(sd, 'img_reg.0', (3, 64, 7, 7), gen=gen)
    _conv(sd, 'attetion_reg.0', (1, 64, 7, 7), gen=gen)
    if old_torch:
        sd = {k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}
    return {('module.' + k if multi_gpu else k): v for k, v in sd.items()}


def replicate_generator():
    sd, gen = stargan_body('model', 'conv_block', bias=True, norm=False, seed=2)
    _conv(sd, 'color_top.0', (3, 64, 7, 7), gen=gen)
    _conv(sd, 'au_top.0', (1, 64, 7, 7), gen=gen)
    return sd


def ganmut_generator(space):
    sd, gen = stargan_body(in_ch=5, seed=3)
    _conv(sd, 'main.21', (3, 64, 7, 7), gen=gen)
    if space == 'linear':
        sd['axes.weight'] = torch.randn(6, 2, generator=gen)
        sd['axes.bias'] = torch.randn(6, generator=gen)
    else:
        sd['mu.weight'] = torch.randn(7, 2, generator=gen)
        sd['covariance_axes.weight'] = torch.rand(7, 2, generator=gen) + 0.1
        sd['covariance_angles.weight'] = torch.randn(1, 7, generator=gen)
    return sd


def critic(prefix='main', src='conv1', cls='conv2', seed=4, conv_dim=16, layers=6, k=2):
    """The released critics' keys; 16 channels in the first layer instead of their 64 (44 M weights), which
    the loader reads from the file as it reads every size."""
    gen = torch.Generator().manual_seed(seed)
    sd, ch, cin = {}, conv_dim, 3
    for n in range(layers):
        _conv(sd, f'{prefix}.{2 * n}', (ch, cin, 4, 4), True, gen)
        cin, ch = ch, ch * 2
    sd[f'{src}.weight'] = torch.randn(1, cin, 3, 3, generator=gen) * 0.05
    sd[f'{cls}.weight'] = torch.randn(17, cin, k, k, generator=gen) * 0.05
    return sd


# ------------------------------------------------------------------- the forward passes, stated anew

def body_forward(sd, x, prefix='main', block='main', bias=False, norm=True):
    """The StarGAN body as its authors' code runs it: instance norm with each image's own statistics."""
    def conv(h, name, stride=1, pad=0, transposed=False):
        b = sd.get(name + '.bias') if bias else None
        op = F.conv_transpose2d if transposed else F.conv2d
        return op(h, sd[name + '.weight'], b, stride=stride, padding=pad)

    def inorm(h, name):
        if not norm:
            return F.instance_norm(h)
        return F.instance_norm(h, weight=sd[name + '.weight'], bias=sd[name + '.bias'], use_input_stats=True)

    h = F.relu(inorm(conv(x, f'{prefix}.0', 1, 3), f'{prefix}.1'))
    h = F.relu(inorm(conv(h, f'{prefix}.3', 2, 1), f'{prefix}.4'))
    h = F.relu(inorm(conv(h, f'{prefix}.6', 2, 1), f'{prefix}.7'))
    for i in G_BLOCKS:
        r = F.relu(inorm(conv(h, f'{prefix}.{i}.{block}.0', 1, 1), f'{prefix}.{i}.{block}.1'))
        h = h + inorm(conv(r, f'{prefix}.{i}.{block}.3', 1, 1), f'{prefix}.{i}.{block}.4')
    h = F.relu(inorm(conv(h, f'{prefix}.15', 2, 1, True), f'{prefix}.16'))
    return F.relu(inorm(conv(h, f'{prefix}.18', 2, 1, True), f'{prefix}.19'))


def ganimation_forward(sd, x_rgb, aus, colour, attention, **body):
    """x in [-1, 1] RGB, aus in [0, 5]: the AUs / 5 tiled after the image channels; A * x + (1 - A) * C."""
    cond = (aus / 5)[:, :, None, None].expand(-1, -1, *x_rgb.shape[-2:])
    h = body_forward(sd, torch.cat([x_rgb, cond], 1), **body)
    C = torch.tanh(F.conv2d(h, sd[colour], padding=3))
    A = torch.sigmoid(F.conv2d(h, sd[attention], padding=3))
    return A * x_rgb + (1 - A) * C


def ganmut_forward(sd, x_rgb, code):
    """GANmut runs on BGR images: tanh of the last conv, BGR out."""
    x_bgr = x_rgb.flip(1)
    h = body_forward(sd, torch.cat([x_bgr, code[:, :, None, None].expand(-1, -1, *x_rgb.shape[-2:])], 1))
    return torch.tanh(F.conv2d(h, sd['main.21.weight'], padding=3))      # BGR


def critic_forward(sd, x, prefix='main', src='conv1', cls='conv2'):
    h = x
    for n in range(6):
        h = F.leaky_relu(F.conv2d(h, sd[f'{prefix}.{2 * n}.weight'], sd[f'{prefix}.{2 * n}.bias'], 2, 1), 0.01)
    return F.conv2d(h, sd[f'{src}.weight'], padding=1), F.conv2d(h, sd[f'{cls}.weight']).flatten(1)


def face_and_aus(seed=5, size=64):
    """Two faces (64 px keeps the suite quick: the generators are convolutional; critics need 128 px)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
    x[:, 0] *= 0.3                     # channels that differ, so that a swap of R and B shows
    return x, torch.rand(2, 17, generator=gen) * 5


GANIMATION_FORMATS = {
    'vipermu': ('1-37-G.ckpt', vipermu_generator, {}, 'im_reg.0.weight', 'im_att.0.weight'),
    'official': ('net_epoch_30_id_G.pth', lambda: official_generator(multi_gpu=True, old_torch=True), {},
                 'img_reg.0.weight', 'attetion_reg.0.weight'),
    'replicate': ('30_net_gen.pth', replicate_generator, dict(prefix='model', block='conv_block', bias=True,
                                                             norm=False), 'color_top.0.weight', 'au_top.0.weight'),
}


@pytest.mark.parametrize('fmt', sorted(GANIMATION_FORMATS))
def test_released_ganimation_generators_compute_their_authors_forward_pass(fmt, tmp_path):
    name, make, body, colour, attention = GANIMATION_FORMATS[fmt]
    sd = make()
    torch.save(sd, tmp_path / name)
    trained = model.Trained.newest(str(tmp_path / name))
    assert trained.model == 'ganimation' and trained.released == fmt and len(trained.label_names) == 17
    G, D = trained.networks('cpu')
    assert D is None
    plain = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}
    x, aus = face_and_aus()
    with torch.no_grad():
        ours = G(x, aus / 5)[0]
        theirs = ganimation_forward(plain, x, aus, colour, attention, **body)
    assert (ours - theirs).abs().max() < 1e-4
    assert (theirs - x).abs().mean() > 0.05          # the comparison is not of two copies of the input


@pytest.mark.parametrize('space', ['linear', 'gaussian'])
def test_released_ganmut_generators_run_on_bgr_and_keep_their_space(space, tmp_path):
    sd = ganmut_generator(space)
    path = tmp_path / f'{space}' / '1000000-G.ckpt'
    path.parent.mkdir()
    torch.save(sd, path)
    trained = model.Trained.newest(str(path.parent))              # the folder holding the file
    assert trained.model == 'ganmut' and trained.config['parametrization'] == space
    G, _ = trained.networks('cpu')
    x, _ = face_and_aus()
    code = torch.tensor([[0.6 * math.cos(math.radians(30)), 0.6 * math.sin(math.radians(30))], [-0.5, 0.3]])
    with torch.no_grad():
        ours = G(x, code)[0]
        theirs_bgr = ganmut_forward(sd, x, code)
    assert (ours - theirs_bgr.flip(1)).abs().max() < 1e-4
    assert (ours - theirs_bgr).abs().max() > 0.01                 # fed RGB as if BGR would differ
    s = load_space(trained, 'cpu')
    with torch.no_grad():
        if space == 'linear':      # emotion k = 1..6 along normalize(axes.weight[k - 1]); neutral at the origin
            assert torch.allclose(s.code_for('happy', 1.0), F.normalize(sd['axes.weight'], dim=1)[0], atol=1e-6)
            assert torch.allclose(s.code_for('anger', 0.5), 0.5 * F.normalize(sd['axes.weight'], dim=1)[5], atol=1e-6)
            assert s.code_for('neutral', 1.0).abs().max() == 0
        else:                      # centres tanh(mu); covariance R diag(|a|) R^T with the stored angles
            assert torch.allclose(s.means(), torch.tanh(sd['mu.weight']), atol=1e-6)
            c, si = sd['covariance_angles.weight'][0].cos(), sd['covariance_angles.weight'][0].sin()
            a0, a1 = sd['covariance_axes.weight'][:, 0].abs(), sd['covariance_axes.weight'][:, 1].abs()
            cov = torch.stack([torch.stack([a0 * c * c + a1 * si * si, a0 * c * si - a1 * si * c], -1),
                               torch.stack([a0 * si * c - a1 * c * si, a0 * si * si + a1 * c * c], -1)], -2)
            assert torch.allclose(s.covariances(), cov, atol=2e-4)     # this code adds 1e-4 to each variance


@pytest.mark.parametrize('fmt, names, make, keys', [
    ('vipermu', ('1-37-G.ckpt', '1-37-D.ckpt'), vipermu_generator, {}),
    ('replicate', ('30_net_gen.pth', '30_net_dis.pth'), replicate_generator,
     dict(prefix='model', src='dis_top', cls='aus_top')),
])
def test_a_released_critic_beside_its_generator_is_read_too(fmt, names, make, keys, tmp_path):
    torch.save(make(), tmp_path / names[0])
    sd = critic(**keys)
    torch.save(sd, tmp_path / names[1])
    trained = model.Trained.newest(str(tmp_path / names[0]))
    _, D = trained.networks('cpu')
    x, _ = face_and_aus(size=128)
    with torch.no_grad():
        src, aus, _ = D(x)
        their_src, their_aus = critic_forward(sd, x, **keys)
    assert trained.config['d_conv_dim'] == 16 and trained.config['image_size'] == 128
    assert torch.allclose(src, their_src, atol=1e-5) and torch.allclose(aus, their_aus, atol=1e-5)


def test_a_file_of_no_known_format_is_refused_listing_what_was_looked_for(tmp_path):
    torch.save({'encoder.weight': torch.zeros(3), 'decoder.weight': torch.zeros(3)}, tmp_path / 'mine.pth')
    with pytest.raises(CheckpointError) as e:
        model.Trained.newest(str(tmp_path / 'mine.pth'))
    message = str(e.value)
    for signature in ['im_reg.0.weight', 'attetion_reg.0.weight', 'color_top.0.weight', 'axes.weight', 'mu.weight']:
        assert signature in message
    assert 'its first keys: encoder.weight, decoder.weight' in message


@pytest.mark.parametrize('change, words', [
    (lambda sd: sd.pop('main.6.weight'), 'missing main.6.weight (256, 128, 4, 4)'),
    (lambda sd: sd.update({'main.25.weight': torch.zeros(3)}), 'unexpected main.25.weight (3,)'),
    (lambda sd: sd.update({'im_att.0.weight': torch.zeros(1, 64, 5, 5)}),
     'im_att.0.weight: (1, 64, 5, 5), expected (1, 64, 7, 7)'),
    (lambda sd: sd.pop('main.9.main.4.bias'), 'missing main.9.main.4.bias (256,)'),
])
def test_a_released_file_that_does_not_fit_its_format_names_the_key(change, words, tmp_path):
    sd = vipermu_generator()
    change(sd)
    torch.save(sd, tmp_path / '1-37-G.ckpt')
    with pytest.raises(CheckpointError, match='does not fit') as e:
        model.Trained.newest(str(tmp_path / '1-37-G.ckpt'))
    assert words in str(e.value)


def test_the_newest_released_generator_of_a_folder_is_taken(tmp_path):
    for epoch in (5, 30, 12):
        sd = replicate_generator()
        sd['color_top.0.weight'] = sd['color_top.0.weight'] * 0 + epoch
        torch.save(sd, tmp_path / f'{epoch}_net_gen.pth')
    trained = model.Trained.newest(str(tmp_path))
    assert trained.path.endswith('30_net_gen.pth')
    np.testing.assert_array_equal(trained.ckpt['G']['color.0.weight'].flatten()[:3].numpy(), [30, 30, 30])


# --------------------------------------------------------------------------- through test mode, in uint8

def face_png(path, seed=6):
    """A 128 px face-sized image (test mode reads it without resizing) and its float input in [-1, 1]."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    pixels[..., 2] //= 3                                   # blue unlike red, so that a channel swap shows
    Image.fromarray(pixels).save(path)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1


def to_uint8(y):
    return ((y.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


def read_png(path):
    from PIL import Image
    return np.asarray(Image.open(path).convert('RGB'))


def run_test_mode(argv, tmp_path):
    import main
    assert main.main(['--mode', 'test', '--outputs_dir', str(tmp_path / 'o')] + argv) == 0
    return tmp_path / 'o' / 'results'


@pytest.mark.parametrize('fmt', sorted(GANIMATION_FORMATS))
def test_a_released_ganimation_file_animates_a_face_as_its_authors_code_does(fmt, tmp_path):
    name, make, body, colour, attention = GANIMATION_FORMATS[fmt]
    sd = make()
    plain = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}
    torch.save(sd, tmp_path / name)
    x = face_png(tmp_path / 'face.png')
    aus = torch.tensor([[0.0] * 17, [1.5, 0, 2.0] + [0.5] * 9 + [4.0] + [0.0] * 4])
    header = 'name ' + ' '.join(model.AU_NAMES)
    rows = [f'f{i}.png ' + ' '.join(f'{v:.2f}' for v in row.tolist()) for i, row in enumerate(aus)]
    (tmp_path / 'seq.txt').write_text('\n'.join([header] + rows) + '\n')
    results = run_test_mode(['--test_models_dir', str(tmp_path / name), '--test_images_dir',
                             str(tmp_path / 'face.png'), '--test_attributes_path', str(tmp_path / 'seq.txt'),
                             '--mp4', 'false'], tmp_path)
    for t in range(2):
        with torch.no_grad():
            theirs = to_uint8(ganimation_forward(plain, x, aus[t:t + 1], colour, attention, **body))
        ours = read_png(results / 'face' / f'frame_{t:04d}.png')
        assert np.abs(ours.astype(int) - theirs.astype(int)).mean() <= 1.0
        assert np.abs(ours.astype(int) - to_uint8(x).astype(int)).mean() > 5     # an edit, not the input


@pytest.mark.parametrize('space, edit, code', [
    ('linear', ['--theta', '30', '--rho', '0.6'], [0.6 * math.cos(math.radians(30)), 0.6 * math.sin(math.radians(30))]),
    ('gaussian', ['--x', '0.5', '--y', '-0.3', '--model', 'ganmut'], [0.5, -0.3]),
])
def test_a_released_ganmut_file_edits_a_face_as_its_authors_code_does(space, edit, code, tmp_path):
    sd = ganmut_generator(space)
    torch.save(sd, tmp_path / '1000000-G.ckpt')
    x = face_png(tmp_path / 'face.png')
    results = run_test_mode(['--test_models_dir', str(tmp_path / '1000000-G.ckpt'), '--test_images_dir',
                             str(tmp_path / 'face.png')] + edit, tmp_path)
    with torch.no_grad():
        theirs = to_uint8(ganmut_forward(sd, x, torch.tensor([code])).flip(1))
    ours = read_png(results / 'face_edited.png')
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() <= 1.0


def test_target_aus_without_a_released_critic_start_from_neutral_and_say_so(tmp_path, capsys, monkeypatch):
    from editing import au_reader
    monkeypatch.setattr(au_reader, 'available', lambda: False)    # without the AU reader installed
    sd = replicate_generator()
    torch.save(sd, tmp_path / '30_net_gen.pth')
    x = face_png(tmp_path / 'face.png')
    results = run_test_mode(['--test_models_dir', str(tmp_path), '--test_images_dir', str(tmp_path / 'face.png'),
                             '--target_aus', 'AU12=4,AU25=2'], tmp_path)
    assert 'start from 0 (neutral)' in capsys.readouterr().out
    aus = torch.zeros(1, 17)
    aus[0, model.AU_NAMES.index('AU12')], aus[0, model.AU_NAMES.index('AU25')] = 4, 2
    with torch.no_grad():
        theirs = to_uint8(ganimation_forward(sd, x, aus, 'color_top.0.weight', 'au_top.0.weight',
                                             prefix='model', block='conv_block', bias=True, norm=False))
    assert np.abs(read_png(results / 'face_edited.png').astype(int) - theirs.astype(int)).mean() <= 1.0


def test_a_photo_framed_by_hand_is_edited_with_a_released_generator(tmp_path):
    from PIL import Image
    torch.save(official_generator(), tmp_path / 'net_epoch_30_id_G.pth')
    photo = np.random.default_rng(7).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / 'photo.png')
    results = run_test_mode(['--test_models_dir', str(tmp_path / 'net_epoch_30_id_G.pth'), '--test_images_dir',
                             str(tmp_path / 'photo.png'), '--face_box', '60,40,100,100', '--target_aus', 'AU12=5'],
                            tmp_path)
    edited = read_png(results / 'photo_edited.png')
    assert edited.shape == photo.shape
    outside = np.ones(photo.shape[:2], bool)
    outside[10:170, 30:190] = False           # the crop box: the face box with the default margin, and more
    np.testing.assert_array_equal(edited[outside], photo[outside])
    assert np.abs(edited.astype(int) - photo.astype(int)).mean() > 1


def test_a_parametrization_that_contradicts_the_released_file_is_refused(tmp_path, capsys):
    import main
    torch.save(ganmut_generator('linear'), tmp_path / '1000000-G.ckpt')
    face_png(tmp_path / 'face.png')
    status = main.main(['--mode', 'test', '--outputs_dir', str(tmp_path / 'o'), '--test_models_dir',
                        str(tmp_path / '1000000-G.ckpt'), '--test_images_dir', str(tmp_path / 'face.png'),
                        '--parametrization', 'gaussian', '--x', '0.2'])
    assert status == 2
    assert 'error: --parametrization gaussian: ' in capsys.readouterr().err


def python2_au_pickle(name_utf8, values):
    """The bytes Python 2 writes for {name: float64 array} with protocol 2: 8-bit strings (SHORT_BINSTRING,
    BINSTRING) for the name, numpy's type codes and the array's bytes, as in the original code's
    aus_openface.pkl."""
    import struct

    def short(b):
        return b'U' + bytes([len(b)]) + b
    out = b'\x80\x02}q\x00(' + short(name_utf8)
    out += (b'cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85q\x03' + short(b'b')
            + b'\x87q\x04Rq\x05(K\x01K' + bytes([len(values)]) + b'\x85q\x06cnumpy\ndtype\nq\x07' + short(b'f8')
            + b'K\x00K\x01\x87q\x08Rq\t(K\x03' + short(b'<')
            + b'NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\nb\x89')
    data = np.asarray(values, '<f8').tobytes()
    return out + b'T' + struct.pack('<I', len(data)) + data + b'tq\x0bbu.'


def test_the_original_codes_python2_label_pickles_load(tmp_path):
    import pickle

    import data_loader as dl
    values = np.arange(17) / 4
    raw = python2_au_pickle('café.jpg'.encode('utf-8'), values)
    with pytest.raises(UnicodeDecodeError, match="'ascii' codec can't decode"):
        pickle.loads(raw)                         # what Python 3 does by default
    (tmp_path / 'aus_openface.pkl').write_bytes(raw)
    names, au_names, aus = dl.read_au_pickle(str(tmp_path / 'aus_openface.pkl'))
    assert names == ['café.jpg'] and len(au_names) == 17
    np.testing.assert_allclose(aus[0], values)


def test_init_from_starts_training_from_a_released_generator_and_critic(tmp_path, capsys):
    """A small file in the vipermu format (the loader reads every size from the weights): 2 iterations at a
    learning rate of 1e-12 leave the weights where the file put them, and the run records where they came
    from."""
    import json

    import main
    from utils import checkpoint
    g_state, d_state = vipermu_generator(dim=8, blocks=1), critic(conv_dim=8, layers=3, k=4)     # 32 px
    torch.save(g_state, tmp_path / '7-37-G.ckpt')
    torch.save(d_state, tmp_path / '7-37-D.ckpt')
    out = tmp_path / 'run'
    assert main.main(['--init_from', str(tmp_path / '7-37-G.ckpt'), '--synthetic_dir', str(tmp_path / 's'),
                      '--synthetic_images', '24', '--outputs_dir', str(out), '--num_iters', '2', '--batch_size', '2',
                      '--g_lr', '1e-12', '--d_lr', '1e-12', '--num_workers', '0', '--model_save_step', '2',
                      '--compile', 'false']) == 0
    assert 'G, D from vipermu; fresh optimisers' in capsys.readouterr().out
    config = json.load(open(out / 'config.json'))
    assert config['init_from'] == str(tmp_path / '7-37-G.ckpt') and config['image_size'] == 32
    saved = checkpoint.load(str(out / 'models' / 'iter_00000002.ckpt'))
    torch.testing.assert_close(saved['G']['attn.0.weight'], g_state['im_att.0.weight'], atol=1e-6, rtol=0)
    torch.testing.assert_close(saved['D']['cls.weight'], d_state['conv2.weight'], atol=1e-6, rtol=0)
    assert main.main(['--mode', 'test', '--outputs_dir', str(out), '--test_num_faces', '1']) == 0   # and test mode


def test_eval_mode_scores_a_released_model_on_the_flags_data(tmp_path, monkeypatch, capsys):
    """A released file records no data: eval mode scores it on the flags' data (the synthetic faces at the
    model's 128 px by default), with the same figures as for a run of this code."""
    import json

    import main
    from tiny import quick_reader
    quick_reader(monkeypatch)
    torch.save(ganmut_generator('gaussian'), tmp_path / '1800000-G.ckpt')
    out = tmp_path / 'o'
    assert main.main(['--mode', 'eval', '--test_models_dir', str(tmp_path / '1800000-G.ckpt'), '--outputs_dir',
                      str(out), '--synthetic_dir', str(tmp_path / 's'), '--synthetic_images', '40',
                      '--eval_pairs', '7']) == 0
    assert 'released model: evaluated on built-in synthetic faces' in capsys.readouterr().out
    result = json.load(open(out / 'results' / 'eval_00000000.json'))
    assert result['image_size'] == 128 and result['parametrization'] == 'gaussian'
    assert 0 <= result['emotion_accuracy'] <= 1 and result['model']['l1'] > 0
