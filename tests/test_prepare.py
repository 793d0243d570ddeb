"""--mode prepare: sources found and named, awkward photos read or rejected with their reason, identities
and the held-out split, emotion labels in any spelling."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from prepare import labels, sources
from prepare.sources import Rejected, Source
from synthetic_faces import EMOTIONS


def write(path, data=b''):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def png(pixels, mode=None, **save):
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, format=save.pop('format', 'PNG'), **save)
    return out.getvalue()


# --------------------------------------------------------------------------- sources and names

def test_sources_are_found_recursively_and_named_apart(tmp_path):
    photo = png(np.zeros((8, 8, 3), np.uint8))
    write(tmp_path / 'a' / 'happy' / 'img 1.jpg', photo)
    write(tmp_path / 'a' / 'sad' / 'img 1.jpg', photo)
    write(tmp_path / 'a' / 'sad' / 'Img,2.PNG', photo)
    write(tmp_path / 'a' / 'clip.mp4', b'x')
    write(tmp_path / 'a' / 'notes.txt', b'x')
    write(tmp_path / 'a' / '.hidden' / 'h.jpg', photo)
    single = write(tmp_path / 'b' / 'img 1.jpg', photo)
    found, other = sources.find_sources([str(tmp_path / 'a'), single])
    by_rel = {s.rel: s for s in found}
    assert sorted(by_rel) == ['clip.mp4', 'happy/img 1.jpg', 'img 1.jpg', 'sad/Img,2.PNG', 'sad/img 1.jpg']
    assert by_rel['clip.mp4'].kind == 'video' and by_rel['sad/Img,2.PNG'].kind == 'photo'
    # the same file name three times: told apart by the folders, as far as they go
    assert [by_rel[r].name for r in ('happy/img 1.jpg', 'sad/img 1.jpg', 'img 1.jpg')] == [
        'happy_img_1', 'sad_img_1', 'img_1']
    assert by_rel['sad/Img,2.PNG'].name == 'Img_2' and by_rel['clip.mp4'].name == 'clip'
    assert other == [(str(tmp_path / 'a' / 'notes.txt'), 'not a photo or video (by its extension)')]
    with pytest.raises(Exception, match='--source .*nowhere: no such file or folder'):
        sources.find_sources([str(tmp_path / 'nowhere')])


def test_the_same_path_under_two_sources_is_numbered():
    items = [Source('/x/a/p.jpg', 'photo', 'p.jpg'), Source('/y/a/p.jpg', 'photo', 'p.jpg'),
             Source('/z/P.jpg', 'photo', 'P.jpg')]
    sources.name_sources(items)
    assert [s.name for s in items] == ['p', 'p_2', 'P_3']


# --------------------------------------------------------------------------- awkward photos

def face_like(h=60, w=40):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_photo_formats_are_read_as_rgb_and_named(tmp_path):
    rgb = face_like()
    grey = rgb[..., 0]
    cases = {
        'rgb.png': (png(rgb), rgb, ''),
        'grey.png': (png(grey), np.repeat(grey[..., None], 3, 2), 'grey'),
        'palette.png': (png(rgb[..., :1].repeat(3, 2) // 64 * 64), rgb[..., :1].repeat(3, 2) // 64 * 64, 'palette'),
        'cmyk.jpg': (None, None, 'CMYK'),
        'grey16.png': (None, np.repeat((grey.astype(np.uint16) * 257 // 257)[..., None], 3, 2), '16-bit grey'),
        'alpha.png': (None, None, 'transparency over white'),
    }
    im = Image.fromarray(rgb[..., :1].repeat(3, 2) // 64 * 64).convert('P')
    buf = io.BytesIO()
    im.save(buf, format='PNG')
    cases['palette.png'] = (buf.getvalue(), np.asarray(im.convert('RGB')), 'palette')
    buf = io.BytesIO()
    Image.fromarray(rgb).convert('CMYK').save(buf, format='JPEG', quality=100)
    cases['cmyk.jpg'] = (buf.getvalue(), None, 'CMYK')
    buf = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16) * 257).save(buf, format='PNG')      # 16-bit: 0..65535
    cases['grey16.png'] = (buf.getvalue(), np.repeat(grey[..., None], 3, 2), '16-bit grey')
    alpha = np.dstack([rgb, np.where(np.arange(40) < 20, 255, 0).astype(np.uint8)[None].repeat(60, 0)])
    expect = rgb.copy()
    expect[:, 20:] = 255                                             # transparent half: white
    cases['alpha.png'] = (png(alpha), expect, 'transparency over white')
    for name, (data, expected, note) in cases.items():
        pixels, said = sources.read_photo(write(tmp_path / name, data))
        assert pixels.dtype == np.uint8 and pixels.shape == (60, 40, 3), name
        assert said == note, name
        if expected is not None:
            assert np.array_equal(pixels, expected), name
        else:                                                        # CMYK through JPEG: close to the colours
            assert np.abs(pixels.astype(int) - rgb).mean() < 12, name


def test_exif_orientation_gives_the_upright_photo(tmp_path):
    upright = face_like(60, 40)
    stored = np.rot90(upright, -1)            # what a phone held sideways stores: 40 x 60, turned clockwise
    exif = Image.Exif()
    exif[0x0112] = 8                          # orientation 8: turn 90 degrees anticlockwise to view
    path = write(tmp_path / 'phone.png', png(np.ascontiguousarray(stored), exif=exif.tobytes()))
    pixels, _ = sources.read_photo(path)
    assert np.array_equal(pixels, upright)


def test_huge_photos_are_scaled_down_and_said(tmp_path):
    path = write(tmp_path / 'big.png', png(np.full((300, 500, 3), 90, np.uint8)))
    pixels, said = sources.read_photo(path, max_side=100)
    assert pixels.shape == (60, 100, 3) and said == 'scaled down from 500x300'


@pytest.mark.parametrize('data, reason', [
    (b'', 'empty file'),
    (b'this is a text file, not a photo', 'not an image'),
    ('truncated', 'truncated image'),
])
def test_unusable_files_are_rejected_with_their_reason(tmp_path, data, reason):
    if data == 'truncated':
        whole = png(face_like(200, 200), format='JPEG', quality=95)
        data = whole[:len(whole) // 2]
    path = write(tmp_path / 'bad.jpg', data)
    with pytest.raises(Rejected, match=reason):
        sources.read_photo(path)


# --------------------------------------------------------------------------- identities and the split

def test_identities_from_lfw_names_else_the_video_else_the_photo():
    def src(path, kind='photo'):
        s = Source(path, kind, os.path.basename(path))
        sources.name_sources([s])
        return s
    assert labels.identity_of(src('/d/George_W_Bush_0001.jpg')) == labels.identity_of(src('/d/George_W_Bush_0520.jpg'))
    assert labels.identity_of(src('/d/George_W_Bush_0001.jpg')) == 'id:George_W_Bush'
    assert labels.identity_of(src('/d/facial-expressions_2868588k.jpg')) == 'photo:facial-expressions_2868588k'
    assert labels.identity_of(src('/d/interview.mp4', 'video')) == 'video:interview'
    assert labels.identity_of(src('/d/anna-3.jpg'), r'(.+)-\d+') == 'id:anna'


def test_the_split_keeps_every_identity_on_one_side_near_the_fraction():
    rng = np.random.default_rng(1)
    sizes = [520, 234, 198] + list(rng.integers(1, 20, 2000))
    ids = np.repeat([f'p{i}' for i in range(len(sizes))], sizes)
    held = labels.split_by_identity(ids, 0.1, seed=0)
    assert abs(held.mean() - 0.1) < 0.005
    for name in set(ids):
        side = held[ids == name]
        assert side.all() or not side.any(), name
    assert np.array_equal(held, labels.split_by_identity(ids, 0.1, seed=0))      # seeded
    assert not np.array_equal(held, labels.split_by_identity(ids, 0.1, seed=1))
    two = labels.split_by_identity(['a', 'a', 'b'], 0.1)
    assert two.any() and not two.all()                       # one identity each side, even at 10 %
    assert not labels.split_by_identity(['a', 'b'], 0.0).any()


# --------------------------------------------------------------------------- emotion labels

@pytest.mark.parametrize('cell, name', [('happiness', 'happy'), ('HAPPINESS', 'happy'), ('Happy', 'happy'),
                                        ('sad', 'sad'), ('SADNESS', 'sad'), (' anger ', 'anger'),
                                        ('1', 'happy'), ('7', 'contempt'), ('0', 'neutral')])
def test_emotion_names_in_any_spelling_and_affectnet_codes(cell, name):
    assert labels.emotion_index(cell) == EMOTIONS.index(name)


@pytest.mark.parametrize('cell', ['8', '10', 'confused', 'happy-ish', ''])
def test_other_emotions_are_not_guessed(cell):
    assert labels.emotion_index(cell) is None


def test_label_rows_repeated_or_short_are_reported_and_conflicts_unlabelled(tmp_path):
    path = tmp_path / 'legend.csv'
    path.write_text('user.id,image,emotion\n1,A_0001.jpg,happiness\n2,B.jpg,SADNESS\n3,a_0001.jpg,HAPPINESS\n'
                    '4,B.jpg,anger\n5,C.jpg\n6,sub/D.png,Contempt\n')
    rows, problems = labels.read_source_labels(str(path))
    assert rows['a_0001.jpg'][0] == EMOTIONS.index('happy') and rows['d.png'][0] == EMOTIONS.index('contempt')
    assert rows['b.jpg'][0] is None and 'c.jpg' not in rows
    assert [line for line, _ in problems] == [4, 5, 6]
    assert 'labelled again (line 2), the same emotion' in problems[0][1]
    assert "labelled 'anger' here and 'SADNESS' on line 3: left unlabelled" in problems[1][1]
    assert problems[2][1] == 'expected 3 columns, found 2'
    (tmp_path / 'bad.csv').write_text('name,label\nx.jpg,happy\n')
    with pytest.raises(Exception, match='bad.csv, line 1: the header must name the image file'):
        labels.read_source_labels(str(tmp_path / 'bad.csv'))


# --------------------------------------------------------------------------- the mode's flags

@pytest.mark.parametrize('argv, problem', [
    (['--mode', 'prepare', '--dataset', 'data/x'], '--mode prepare needs --source'),
    (['--mode', 'prepare', '--source', 'photos'], 'give it as --dataset OUT'),
    (['--mode', 'prepare', '--source', 'photos', '--dataset', 'd', '--num_iters', '5'],
     '--num_iters does not apply to --mode prepare; it takes --source, --dataset'),
    (['--mode', 'train', '--source', 'photos'], '--source applies to --mode prepare only'),
    (['--mode', 'test', '--test_fraction', '0.2'], '--test_fraction applies to --mode prepare only'),
    (['--mode', 'prepare', '--source', 'p', '--dataset', 'd', '--identity_regex', '(unclosed'],
     "--identity_regex '(unclosed': not a regular expression"),
    (['--mode', 'prepare', '--source', 'p', '--dataset', 'd', '--source_labels', 'nowhere.csv'],
     '--source_labels nowhere.csv: no such file'),
])
def test_prepare_flags_are_checked_before_anything_is_read(argv, problem, tmp_path, capsys):
    import main
    assert main.main(argv) == 2
    assert problem in capsys.readouterr().err
    assert not os.path.exists('d') and not os.path.exists('data')
