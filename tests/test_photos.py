"""Photos that are not aligned crops (editing/photos.py): framing, feathered paste-back that leaves
everything outside the face region unchanged, --face_box, detection on a real photo
(scikit-image's astronaut, with the optional extras), group photos, GANmut, and the
animation helpers (--interpolate, --smooth, MP4)."""
import os
import sys

import numpy as np
import pytest
from PIL import Image
from tiny import TINY_MODEL

import main
import synthetic_faces as sf
from editing import animate
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


def outside(mask_shape, squares):
    keep = np.ones(mask_shape, bool)
    for x0, y0, s in squares:
        keep[max(0, y0):y0 + s, max(0, x0):x0 + s] = False
    return keep


# --------------------------------------------------------------------------- framing and paste

def test_crop_square_framing():
    assert faces.crop_square((100, 50, 40, 40), 0.15) == (94, 44, 52)    # side 40 * 1.3, same centre
    assert faces.crop_square((0, 0, 30, 50), 0.0) == (-10, 0, 50)         # square on the longer side
    assert faces.parse_face_boxes('1,2,3,4; 5,6,7,8') == [(1, 2, 3, 4), (5, 6, 7, 8)]
    for bad in ('1,2,3', '1,2,a,4', '1,2,0,4', ''):
        with pytest.raises(ValueError, match='--face_box'):
            faces.parse_face_boxes(bad)


def test_feather_weights():
    w = faces.feather_weights(50, 0.2)
    assert w.shape == (50, 50)
    assert w[0].max() == 0 and w[:, -1].max() == 0            # 0 on the border
    assert np.all(w[10:40, 10:40] == 1)                      # 1 inside the band
    row = w[25, :25]
    assert np.all(np.diff(row) >= 0) and 0 < row[5] < 1       # a smooth ramp


def test_paste_changes_only_the_crop_box():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    squares = [(10, 20, 40), (95, 60, 40)]                    # the second reaches past the border
    before = [faces.crop(photo, s, 16) for s in squares]
    assert np.array_equal(faces.paste(photo, [(s, b, b) for s, b in zip(squares, before)]), photo)  # no change
    after = [np.full_like(b, 255) for b in before]
    out = faces.paste(photo, [(s, b, a) for s, b, a in zip(squares, before, after)])
    keep = outside(photo.shape[:2], squares)
    assert out.shape == photo.shape and np.array_equal(out[keep], photo[keep])
    assert out[40, 30].mean() > photo[40, 30].mean() or photo[40, 30].min() == 255
    assert np.abs(out[25:55, 15:45].astype(int) - 255).max() <= 1   # the middle takes the edit
    assert np.array_equal(out[20, 10:50], photo[20, 10:50])          # weight 0 on the crop's border


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
    square = faces.crop_square(box, 0.15)
    assert square == (90, 40, 64)
    keep = outside(photo.shape[:2], [square])
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
    # outside the face region the animated photo is the photo (up to GIF palette)
    keep = outside(photo.shape[:2], [faces.crop_square(box, 0.15)])
    assert np.abs(last[:, 150:][keep].astype(int) - photo[keep]).mean() < 40


def test_ganmut_edits_photos(trained_ganmut, tmp_path):
    path, photo, box = noisy_photo_with_face(tmp_path)
    res = tmp_path / 'res'
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained_ganmut), '--test_images_dir', str(path),
                    '--face_box', ','.join(map(str, box)), '--emotion', 'happy', '--test_results_dir', str(res)])
    assert rc == 0
    out = np.asarray(Image.open(res / 'photo_edited.png'))
    keep = outside(photo.shape[:2], [faces.crop_square(box, 0.15)])
    assert out.shape == photo.shape and np.array_equal(out[keep], photo[keep])
    assert not np.array_equal(out, photo)


def test_no_face_found_names_the_file(trained, tmp_path, capsys):
    pytest.importorskip('cv2')
    d = tmp_path / 'p'
    d.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(d / 'noise.png')
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_images_dir', str(d),
                    '--detect_faces', 'true', '--target_aus', 'AU12=4'])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(d / 'noise.png') in err and 'no face found' in err and '--face_box' in err


def test_without_opencv_face_box_works_and_detection_says_what_to_install(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'cv2', None)      # import cv2 -> ImportError
    path, photo, box = noisy_photo_with_face(tmp_path)
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_images_dir', str(path),
                    '--detect_faces', 'true', '--target_aus', 'AU12=4', '--test_results_dir', str(tmp_path / 'a')])
    assert rc == 2
    assert 'pip install -r requirements-extras.txt' in capsys.readouterr().err
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_images_dir', str(path),
                    '--face_box', ','.join(map(str, box)), '--target_aus', 'AU12=4',
                    '--test_results_dir', str(tmp_path / 'b')])
    assert rc == 0 and (tmp_path / 'b' / 'photo_edited.png').exists()


# --------------------------------------------------------------------------- detection (optional extras)

def astronaut():
    pytest.importorskip('cv2')
    data = pytest.importorskip('skimage.data')
    return data.astronaut()


def iou(a, b):
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_detects_the_astronaut():
    boxes = faces.detect_faces(astronaut())
    assert len(boxes) == 1
    # the face, marked by hand: brows to chin, cheek to cheek
    assert iou(boxes[0], (180, 75, 90, 95)) > 0.6


def test_default_margin_matches_the_synthetic_faces(tmp_path):
    """The documented calibration: the detector on training crops gives --face_margin 0.15."""
    pytest.importorskip('cv2')
    d = tmp_path / 'crops'
    d.mkdir()
    for s in range(16):
        Image.fromarray(sf.render(sf.sample_identity(s), sf.emotion_prototype(s % 8, 3.0), 64)).save(d / f'{s}.png')
    c = faces.calibrate(str(d))
    assert c['faces'] >= 10
    assert abs(c['margin'] - faces.DEFAULT_MARGIN) < 0.04
    assert abs(c['centre_x'] - 0.5) < 0.03 and abs(c['centre_y'] - 0.5) < 0.03


def test_group_photo_every_face_edited(trained, tmp_path):
    a = astronaut()
    group = np.full((512, 1100, 3), 200, np.uint8)
    group[:, :512], group[:, 560:1072] = a, a[:, ::-1]
    d = tmp_path / 'g'
    d.mkdir()
    Image.fromarray(group).save(d / 'group.png')
    res = tmp_path / 'res'
    rc = main.main(['--mode', 'test', '--outputs_dir', str(trained), '--test_images_dir', str(d),
                    '--detect_faces', 'true', '--target_aus', 'AU12=5', '--test_results_dir', str(res)])
    assert rc == 0
    assert (res / 'group_face1_edited.png').exists() and (res / 'group_face2_edited.png').exists()
    out = np.asarray(Image.open(res / 'group_edited.png'))
    squares = [faces.crop_square(b, 0.15) for b in faces.detect_faces(group)]
    assert len(squares) == 2 and squares[0][0] < 512 < squares[1][0]
    keep = outside(group.shape[:2], squares)
    assert out.shape == group.shape and np.array_equal(out[keep], group[keep])
    for x0, y0, s in squares:   # both faces changed
        c = (slice(y0 + s // 4, y0 + 3 * s // 4), slice(x0 + s // 4, x0 + 3 * s // 4))
        assert np.abs(out[c].astype(int) - group[c]).mean() > 0.5


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
        assert paths[1].endswith('a.mp4') and os.path.getsize(paths[1]) > 0
        reader = imageio_ffmpeg.read_frames(paths[1])
        meta = next(reader)
        assert meta['size'] == (46, 34) and sum(1 for _ in reader) == 6
    monkeypatch.setitem(sys.modules, 'imageio_ffmpeg', None)
    with pytest.raises(ValueError, match='requirements-extras.txt'):
        animate.save_animation(frames, str(tmp_path / 'b.gif'), 5, 'true')


def test_a_released_generator_edits_the_face_it_finds_in_a_real_photo(tmp_path):
    """A generator file in the replicate format (tests/test_released.py writes it from the format's facts):
    the detector finds the face of a real photo, the crop goes through the 128 px released model, and only
    the crop's square changes."""
    pytest.importorskip('cv2')
    import torch
    from test_released import replicate_generator
    torch.save(replicate_generator(), tmp_path / '30_net_gen.pth')
    photo = astronaut()
    Image.fromarray(photo).save(tmp_path / 'astronaut.png')
    res = tmp_path / 'res'
    rc = main.main(['--mode', 'test', '--test_models_dir', str(tmp_path / '30_net_gen.pth'), '--test_images_dir',
                    str(tmp_path / 'astronaut.png'), '--detect_faces', 'true', '--target_aus', 'AU12=5',
                    '--outputs_dir', str(tmp_path / 'o'), '--test_results_dir', str(res)])
    assert rc == 0
    out = np.asarray(Image.open(res / 'astronaut_edited.png'))
    squares = [faces.crop_square(b, 0.15) for b in faces.detect_faces(photo)]
    assert len(squares) == 1
    keep = outside(photo.shape[:2], squares)
    assert out.shape == photo.shape and np.array_equal(out[keep], photo[keep])
    x0, y0, s = squares[0]
    assert np.abs(out[y0:y0 + s, x0:x0 + s].astype(int) - photo[y0:y0 + s, x0:x0 + s]).mean() > 1
