import csv
import filecmp
import os
import pickle

import numpy as np
import pytest

import synthetic_faces as sf
from utils.errors import UserError


def _aus(**kw):
    a = np.zeros(sf.NUM_AUS)
    for name, v in kw.items():
        a[sf.AU_INDEX[name]] = v
    return a


def test_render_shape_dtype_at_all_sizes():
    ident = sf.sample_identity(0)
    for size in (32, 64, 96, 128, 256):
        img = sf.render(ident, np.zeros(17), size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8


def test_render_is_deterministic_and_identities_differ():
    a, b = sf.render(sf.sample_identity(5), _aus(AU12=3), 64), sf.render(sf.sample_identity(5), _aus(AU12=3), 64)
    assert np.array_equal(a, b)
    imgs = [sf.render(sf.sample_identity(s), np.zeros(17), 64).astype(float) for s in range(6)]
    for i in range(6):
        for j in range(i + 1, 6):
            assert np.abs(imgs[i] - imgs[j]).mean() > 5.0


def test_render_rejects_wrong_au_count():
    with pytest.raises(ValueError, match='17 AU'):
        sf.render(sf.sample_identity(0), np.zeros(16), 64)


@pytest.mark.parametrize('au', sf.AU_NAMES)
def test_each_au_is_local_and_monotonic(au):
    size = 128
    for seed in (11, 12, 13):
        ident = sf.sample_identity(seed)
        base = sf.render(ident, np.zeros(17), size).astype(np.int32)
        mid = sf.render(ident, _aus(**{au: 2.5}), size).astype(np.int32)
        full = sf.render(ident, _aus(**{au: 5.0}), size).astype(np.int32)
        region = sf.region_mask(ident, au, size, margin=2)
        d_mid = np.abs(mid - base).sum(-1)
        d_full = np.abs(full - base).sum(-1)
        assert d_full[~region].max() == 0, f'{au} changed pixels outside its region'
        assert d_mid[~region].max() == 0
        # visible, and more at 5 than at 2.5 (a moved feature saturates the pixel
        # difference once it moved past its own width, hence no fixed ratio)
        assert d_full.sum() > d_mid.sum() > 0, au
        assert np.abs(full - mid).sum() > 0.2 * d_mid.sum()
        assert (d_full > 30).sum() >= 20, f'{au} at 5 barely changes the face'


def test_write_dataset_is_byte_identical_and_splits_are_disjoint(tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    sf.main(['--out', str(a), '--num_images', '60', '--image_size', '32', '--seed', '3'])
    sf.main(['--out', str(b), '--num_images', '60', '--image_size', '32', '--seed', '3'])
    for name in ('aus.txt', 'aus_openface.pkl', 'train_ids.csv', 'test_ids.csv', 'training.csv', 'meta.csv'):
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    imgs = sorted(os.listdir(a / 'images'))
    assert len(imgs) == 60
    assert all(filecmp.cmp(a / 'images' / f, b / 'images' / f, shallow=False) for f in imgs)

    meta = sf.read_meta(str(a))
    train = (a / 'train_ids.csv').read_text().split()
    test = (a / 'test_ids.csv').read_text().split()
    assert train and test and set(train).isdisjoint(test) and len(train) + len(test) == 60
    train_idents = {meta[n][0] for n in train}
    test_idents = {meta[n][0] for n in test}
    assert train_idents.isdisjoint(test_idents)
    with open(a / 'training.csv') as f:
        rows = list(csv.DictReader(f))
    assert {os.path.basename(r['subDirectory_filePath']) for r in rows} == set(train)
    with open(a / 'aus_openface.pkl', 'rb') as f:
        d = pickle.load(f)
    assert set(d) == {n[:-4] for n in imgs}


def test_other_seed_gives_other_data(tmp_path):
    sf.main(['--out', str(tmp_path / 'a'), '--num_images', '10', '--image_size', '32', '--seed', '1'])
    sf.main(['--out', str(tmp_path / 'b'), '--num_images', '10', '--image_size', '32', '--seed', '2'])
    assert (tmp_path / 'a' / 'aus.txt').read_text() != (tmp_path / 'b' / 'aus.txt').read_text()


def test_image_of_dataset_is_render_of_its_identity(tmp_path):
    from PIL import Image
    sf.main(['--out', str(tmp_path), '--num_images', '12', '--image_size', '64', '--seed', '4'])
    meta = sf.read_meta(str(tmp_path))
    line = (tmp_path / 'aus.txt').read_text().splitlines()[7].split()
    img = np.asarray(Image.open(tmp_path / 'images' / line[0]))
    again = sf.render(sf.sample_identity(meta[line[0]][0]), np.array(line[1:], float), 64)
    assert np.array_equal(img, again)


def test_labels_look_like_real_data():
    rng = np.random.default_rng(0)
    samples = [sf.sample_labels(rng) for _ in range(3000)]
    aus = np.stack([s[0] for s in samples])
    emotions = np.array([s[1] for s in samples])
    assert set(emotions.tolist()) == set(range(8))
    assert aus.min() >= 0 and aus.max() <= 5
    assert (aus < 0.3).mean() > 0.5 and (aus == 0).mean() > 0.2   # mostly absent, like OpenFace output
    happy = aus[emotions == 1]
    neutral = aus[emotions == 0]
    assert happy[:, sf.AU_INDEX['AU12']].mean() > 2.0 > neutral[:, sf.AU_INDEX['AU12']].mean()
    surprise = aus[emotions == 3]
    assert surprise[:, sf.AU_INDEX['AU26']].mean() > 2.0
    # intensities vary within a class (not a fixed prototype)
    assert happy[:, sf.AU_INDEX['AU12']].std() > 0.5
    assert sf.sample_labels(np.random.default_rng(1), num_classes=7)[1] < 7


def test_contact_sheet(tmp_path):
    from PIL import Image
    path = sf.contact_sheet(str(tmp_path / 'sheet.png'), cell=32, seeds=(1,))
    w, h = Image.open(path).size
    assert h == 24 + 17 * 32 and w > 3 * 32


def _leftovers(parent):
    return [n for n in os.listdir(parent) if '.partial-' in n or '.old-' in n]


def test_a_smaller_dataset_replaces_a_larger_one_whole(tmp_path):
    """Writing 8 images where 12 were (the demo after a default run in data/synthetic) leaves 8
    images, not 12 with 4 unlabelled; files derived from the data (.cache) stay."""
    out = tmp_path / 'synthetic'
    sf.write_dataset(str(out), 12, 32, seed=1, verbose=False)
    (out / '.cache').mkdir()
    (out / '.cache' / 'reader.pt').write_text('kept')
    sf.write_dataset(str(out), 8, 32, seed=1, verbose=False)
    assert sorted(os.listdir(out / 'images')) == [f'{i:06d}.png' for i in range(8)]
    assert len((out / 'aus.txt').read_text().splitlines()) == 8
    assert sf.is_synthetic_dataset(str(out), 8, 32, 1) and not sf.is_synthetic_dataset(str(out), 12, 32, 1)
    assert (out / '.cache' / 'reader.pt').read_text() == 'kept'
    assert _leftovers(tmp_path) == []


def test_a_dataset_with_extra_images_is_not_taken_as_complete(tmp_path):
    """A folder written over in place by an older version: its dataset.json matches, but an older,
    larger dataset's images are still there; it is written again."""
    sf.write_dataset(str(tmp_path / 'd'), 6, 32, seed=1, verbose=False)
    (tmp_path / 'd' / 'images' / '000006.png').write_bytes((tmp_path / 'd' / 'images' / '000000.png').read_bytes())
    assert not sf.is_synthetic_dataset(str(tmp_path / 'd'), 6, 32, 1)
    sf.ensure_dataset(str(tmp_path / 'd'), 6, 32)
    assert sf.is_synthetic_dataset(str(tmp_path / 'd'), 6, 32, 0)
    assert len(os.listdir(tmp_path / 'd' / 'images')) == 6


def test_a_dataset_another_process_installed_first_is_left_as_it_is(tmp_path):
    out = tmp_path / 'd'
    sf.write_dataset(str(out), 6, 32, seed=1, verbose=False)
    inode = os.stat(out).st_ino
    sf.write_dataset(str(out), 6, 32, seed=1, verbose=False)    # the slower of two runs that generated it
    assert os.stat(out).st_ino == inode and sf.is_synthetic_dataset(str(out), 6, 32, 1)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize('foreign', ['notes.txt', 'images/holiday.jpg'])
def test_a_folder_holding_other_files_is_refused_and_left_alone(tmp_path, foreign):
    out = tmp_path / 'mine'
    (out / 'images').mkdir(parents=True)
    (out / foreign).write_text('my file')
    with pytest.raises(FileExistsError, match=r'mine.*' + foreign.split('/')[-1] + '.*did not write'):
        sf.write_dataset(str(out), 6, 32, seed=1, verbose=False)
    assert (out / foreign).read_text() == 'my file' and not (out / 'aus.txt').exists()
    assert _leftovers(tmp_path) == []
    with pytest.raises(UserError, match='mine.*did not write'):          # main.py's --synthetic_dir
        sf.ensure_dataset(str(out), 6, 32)
    with pytest.raises(SystemExit):                                     # the command line
        sf.main(['--out', str(out), '--num_images', '6', '--image_size', '32'])
    assert (out / foreign).read_text() == 'my file'


def test_a_symlinked_folder_is_replaced_where_it_points(tmp_path):
    (tmp_path / 'disk').mkdir()
    sf.write_dataset(str(tmp_path / 'disk' / 'faces'), 8, 32, seed=1, verbose=False)
    os.symlink(tmp_path / 'disk' / 'faces', tmp_path / 'link')
    sf.write_dataset(str(tmp_path / 'link'), 6, 32, seed=1, verbose=False)
    assert os.path.islink(tmp_path / 'link') and sf.is_synthetic_dataset(str(tmp_path / 'link'), 6, 32, 1)
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / 'disk') == []
