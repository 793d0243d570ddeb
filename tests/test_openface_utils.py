"""openface_utils: OpenFace CSVs (both layouts, both separators, shuffled and extra columns,
dropped rows, two faces in one image) -> dataset folder and AU sequences; running the
OpenFace binaries; OpenFace video CSVs as test-mode sequences with --interpolate."""
import os
import stat
import sys

import numpy as np
import pytest
from PIL import Image
from tiny import TINY_MODEL

import data_loader as dl
import main
import openface_utils as ou
from openface_utils import __main__ as ou_cli
from synthetic_faces import AU_NAMES

AU_R = [f'{a}_r' for a in AU_NAMES]
AU_C = [f'{a}_c' for a in AU_NAMES[:-1]] + ['AU28_c', 'AU45_c']
EXTRA = ['gaze_0_x', 'gaze_angle_y', 'pose_Tx', 'pose_Rz', 'x_0', 'y_0', 'X_0', 'p_scale']


def aus_of(seed):
    """17 intensities with two decimals, distinct per AU so a column mix-up shows."""
    return np.round(np.random.default_rng(seed).uniform(0, 5, 17), 2)


def write_csv(path, layout, rows, sep=', ', shuffle_seed=None):
    """An OpenFace-style CSV. rows: dicts with confidence, aus and face (image) or
    frame, face_id, success (video)."""
    cols = ['face', 'confidence'] if layout == 'image' else ['frame', 'face_id', 'timestamp', 'confidence', 'success']
    cols += EXTRA + AU_R + AU_C
    if shuffle_seed is not None:
        cols = [cols[i] for i in np.random.default_rng(shuffle_seed).permutation(len(cols))]
    lines = [sep.join(cols)]
    for r in rows:
        vals = {c: '0.123' for c in EXTRA}
        vals.update({c: '0' for c in AU_C})
        vals.update({f'{a}_c': str(int(v > 1)) for a, v in zip(AU_NAMES, r['aus'])})
        vals.update({c: f'{v:.2f}' for c, v in zip(AU_R, r['aus'])})
        vals['confidence'] = f'{r["confidence"]:.3f}'
        if layout == 'image':
            vals['face'] = str(r['face'])
        else:
            vals.update(frame=str(r['frame']), face_id=str(r.get('face_id', 0)),
                        timestamp=f'{(r["frame"] - 1) / 30:.3f}', success=str(r.get('success', 1)))
        lines.append(sep.join(vals[c] for c in cols))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def write_aligned(path, value, size=32):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


@pytest.fixture
def openface_dir(tmp_path):
    """What FaceLandmarkImg and FeatureExtraction leave in their -out_dir."""
    d = tmp_path / 'openface'
    # two faces in one image, ", " separators, shuffled columns
    write_csv(str(d / 'group.csv'), 'image', [dict(face=0, confidence=0.98, aus=aus_of(1)),
                                               dict(face=1, confidence=0.95, aus=aus_of(2))], ', ', shuffle_seed=3)
    write_aligned(str(d / 'group_aligned' / 'face_det_000000.jpg'), 40)
    write_aligned(str(d / 'group_aligned' / 'face_det_000001.jpg'), 80)
    # "," separators, a low-confidence face
    write_csv(str(d / 'blurry.csv'), 'image', [dict(face=0, confidence=0.50, aus=aus_of(3))], ',')
    write_aligned(str(d / 'blurry_aligned' / 'face_det_000000.jpg'), 120)
    # kept by confidence but OpenFace wrote no aligned face (-nobadaligned)
    write_csv(str(d / 'noalign.csv'), 'image', [dict(face=0, confidence=0.99, aus=aus_of(4))])
    # in a sub-folder, one value above 5 (clipped)
    big = aus_of(5)
    big[3] = 5.2
    write_csv(str(d / 'more' / 'solo.csv'), 'image', [dict(face=0, confidence=0.90, aus=big)], ',', shuffle_seed=7)
    write_aligned(str(d / 'more' / 'solo_aligned' / 'face_det_000000.png'), 160)
    # a video: 6 frames, frame 3 failed, frame 5 low confidence; "," separators, shuffled
    rows = [dict(frame=t, confidence=0.4 if t == 5 else 0.97, success=0 if t == 3 else 1, aus=aus_of(10 + t))
            for t in range(1, 7)]
    write_csv(str(d / 'clip.csv'), 'video', rows, ',', shuffle_seed=11)
    for t in range(1, 7):
        write_aligned(str(d / 'clip_aligned' / f'frame_det_00_{t:06d}.bmp'), 20 * t)
    return d


def test_convert_images_and_video(openface_dir, tmp_path, capsys):
    out = tmp_path / 'data'
    rep = ou.convert(str(openface_dir), str(out))
    text = capsys.readouterr().out
    assert rep['images'] == dict(csv_files=4, rows=5, kept=3, train=2, test=1,
                                 dropped={'confidence': 1, 'no_image': 1})
    assert rep['videos']['rows'] == 6 and rep['videos']['kept'] == 4
    assert rep['videos']['dropped'] == {'success': 1, 'confidence': 1}
    assert rep['clipped_values'] == 1
    assert 'kept 3, dropped 2: 1 confidence below 0.88; 1 no aligned face image' in text
    assert '1 success 0' in text and 'kept 4' in text

    names, au_names, values = dl.read_au_table(str(out / 'aus.txt'))
    assert names == ['group.jpg', 'group_face1.jpg', 'more_solo.png']
    assert au_names == AU_NAMES
    expect = np.stack([aus_of(1), aus_of(2), np.minimum(aus_of(5), 5)])
    expect[2, 3] = 5.0
    np.testing.assert_allclose(values, expect, atol=1e-6)
    # the aligned faces, under the names of the table
    assert sorted(os.listdir(out / 'images')) == sorted(names)
    assert np.asarray(Image.open(out / 'images' / 'group_face1.jpg')).mean() == pytest.approx(80, abs=2)
    # the AU dict and the split, readable by the training loader
    ids, _, pk = dl.read_au_pickle(str(out / 'aus_openface.pkl'))
    assert ids == ['group', 'group_face1', 'more_solo']
    np.testing.assert_allclose(pk, values, atol=1e-6)
    train = dl.read_id_list(str(out / 'train_ids.csv'))
    test = dl.read_id_list(str(out / 'test_ids.csv'))
    assert sorted(train + test) == sorted(names) and len(test) == 1
    ds = dl.au_dataset(str(out / 'images'), str(out / 'aus_openface.pkl'), 32, 'train')
    assert len(ds) == 2 and ds.labels.shape == (2, 17)

    # the video: an AU sequence with its aligned frames
    seq_names, _, seq = dl.read_au_table(str(out / 'sequences' / 'clip.txt'))
    assert seq_names == [f'clip/frame_{t:06d}.bmp' for t in (1, 2, 4, 6)]
    np.testing.assert_allclose(seq, np.stack([aus_of(10 + t) for t in (1, 2, 4, 6)]), atol=1e-6)
    assert all((out / 'sequences' / n).exists() for n in seq_names)


def test_min_confidence_flag_and_cli(openface_dir, tmp_path, capsys):
    out = tmp_path / 'low'
    assert ou_cli.main(['--openface_dir', str(openface_dir), '--out_dir', str(out), '--min_confidence', '0.3']) == 0
    names, _, _ = dl.read_au_table(str(out / 'aus.txt'))
    assert 'blurry.jpg' in names and len(names) == 4
    assert len(dl.read_au_table(str(out / 'sequences' / 'clip.txt'))[0]) == 5   # frame 5 kept, frame 3 still failed
    assert 'no aligned face image' in capsys.readouterr().out


def test_separators_and_column_order_do_not_matter(tmp_path):
    rows = [dict(face=0, confidence=0.9, aus=aus_of(21)), dict(face=1, confidence=0.91, aus=aus_of(22))]
    tables = []
    for i, (sep, shuffle) in enumerate([(', ', None), (',', None), (', ', 1), (',', 2)]):
        p = str(tmp_path / f't{i}.csv')
        write_csv(p, 'image', rows, sep, shuffle)
        tables.append(ou.read_openface_csv(p))
    for t in tables:
        assert t.layout == 'image' and [r.face for r in t.rows] == [0, 1]
        np.testing.assert_allclose(np.stack([r.aus for r in t.rows]), np.stack([aus_of(21), aus_of(22)]), atol=1e-6)


@pytest.mark.parametrize('content, line, msg', [
    ('', 1, 'empty'),
    ('a, b, c\n1, 2, 3\n', 1, 'not an OpenFace CSV'),
    ('face, confidence, ' + ', '.join(AU_R[:8] + AU_R[9:]) + '\n', 1, 'missing AU intensity column(s) AU12_r'),
    ('face, confidence, ' + ', '.join(AU_C) + '\n', 1, 'only presence columns'),
    ('face, confidence, ' + ', '.join(AU_R) + '\n0, 0.9, ' + ', '.join(['1'] * 16) + '\n', 2,
     'expected 19 columns as in the header, found 18'),
    ('face, confidence, ' + ', '.join(AU_R) + '\n0, 0.9, ' + ', '.join(['1'] * 17) + '\n'
     '1, 0.9, ' + ', '.join(['1'] * 8 + ['high'] + ['1'] * 8) + '\n', 3, "column AU12_r: 'high' is not a number"),
])
def test_bad_csv_errors_name_file_line_and_problem(tmp_path, content, line, msg):
    p = tmp_path / 'bad.csv'
    p.write_text(content)
    with pytest.raises(dl.DataError) as e:
        ou.read_openface_csv(str(p))
    assert str(e.value).startswith(f'{p}, line {line}: ')
    assert msg in str(e.value)


def test_cli_errors(tmp_path, capsys):
    assert ou_cli.main(['--openface_dir', str(tmp_path / 'nope'), '--out_dir', str(tmp_path / 'o')]) == 2
    assert 'no such folder' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert ou_cli.main(['--openface_dir', str(tmp_path / 'empty'), '--out_dir', str(tmp_path / 'o')]) == 2
    assert 'no OpenFace CSV found' in capsys.readouterr().err


def test_missing_openface_binary_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('PATH', str(tmp_path))
    monkeypatch.delenv('OPENFACE_BIN', raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'imgs').mkdir()
    rc = ou_cli.main(['--images', str(tmp_path / 'imgs'), '--openface_dir', str(tmp_path / 'of'),
                      '--out_dir', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert rc == 2
    assert 'FaceLandmarkImg not found' in err and 'Unix-Installation' in err and '--openface_bin' in err
    assert '-simalign -au_static -nobadaligned -simsize 128 -format_aligned jpg' in err


@pytest.mark.skipif(sys.platform == 'win32', reason='shell script stands in for OpenFace')
def test_runs_openface_with_the_seed_command(tmp_path, openface_dir, capsys):
    """A stand-in FaceLandmarkImg records its arguments and writes what OpenFace would."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    log = tmp_path / 'args.txt'
    src = openface_dir / 'group.csv'
    for name in ('FaceLandmarkImg', 'FeatureExtraction'):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "$0 $*" >> {log}\n'
                          f'out=""; while [ $# -gt 0 ]; do [ "$1" = "-out_dir" ] && out="$2"; shift; done\n'
                          f'mkdir -p "$out/group_aligned" && cp {src} "$out/group.csv" && '
                          f'cp {openface_dir}/group_aligned/* "$out/group_aligned/"\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    video = tmp_path / 'clip.mp4'
    video.write_bytes(b'')
    (tmp_path / 'imgs').mkdir()
    rc = ou_cli.main(['--images', str(tmp_path / 'imgs'), '--videos', str(video), '--openface_bin', str(bin_dir),
                      '--openface_dir', str(tmp_path / 'of'), '--out_dir', str(tmp_path / 'o')])
    assert rc == 0
    calls = log.read_text().splitlines()
    assert calls[0].endswith(f'FaceLandmarkImg -fdir {tmp_path / "imgs"} -out_dir {tmp_path / "of"} -aus -simalign '
                             '-au_static -nobadaligned -simsize 128 -format_aligned jpg -nomask')
    assert f'FeatureExtraction -f {video} -out_dir {tmp_path / "of"} -aus -simalign' in calls[1]
    assert dl.read_au_table(str(tmp_path / 'o' / 'aus.txt'))[0] == ['group.jpg', 'group_face1.jpg']


# --------------------------------------------------------------------------- test mode with OpenFace sequences

TINY = TINY_MODEL + ['--log_step', '2', '--synthetic_images', '48']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp('trained')
    rc = main.main(['--mode', 'train', '--dataset', 'synthetic', '--synthetic_dir', str(tmp_path_factory.mktemp('s')),
                    '--outputs_dir', str(out), '--num_iters', '2', '--model_save_step', '2', '--sample_step', '100']
                   + TINY)
    assert rc == 0
    return out


def gif_frames(path):
    with Image.open(path) as g:
        return g.n_frames, g.size


@pytest.mark.parametrize('which', ['csv', 'converted'])
def test_video_sequence_animates_with_interpolation(trained, openface_dir, tmp_path, which, capsys):
    faces = tmp_path / 'faces'
    write_aligned(str(faces / 'me.png'), 128, size=48)
    if which == 'csv':
        seq = openface_dir / 'clip.csv'
    else:
        ou.convert(str(openface_dir), str(tmp_path / 'data'), log=None)
        seq = tmp_path / 'data' / 'sequences' / 'clip.txt'
    res = tmp_path / 'res'
    rc = main.main(['--mode', 'test', '--test_models_dir', str(trained / 'models'), '--test_images_dir', str(faces),
                    '--test_attributes_path', str(seq), '--test_results_dir', str(res), '--interpolate', '2',
                    '--smooth', '1', '--mp4', 'false'])
    assert rc == 0
    assert gif_frames(res / 'me.gif') == ((4 - 1) * 3 + 1, (32, 32))
    # reference frames exist: all_faces.gif is reference | face
    assert gif_frames(res / 'all_faces.gif') == (10, (64, 32))
    assert not list(res.glob('*.mp4'))
    if which == 'csv':
        assert 'AU sequence of 4 frame(s) of 6' in capsys.readouterr().out
