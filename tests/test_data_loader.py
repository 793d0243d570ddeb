import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import data_loader as dl
import synthetic_faces as sf


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth')
    sf.write_dataset(str(root), num_images=40, image_size=32, seed=9, verbose=False)
    return root


def test_three_formats_give_the_same_labels(synth):
    txt = dl.au_dataset(str(synth / 'images'), str(synth / 'aus.txt'), 32, split='train')
    pkl = dl.au_dataset(str(synth / 'images'), str(synth / 'aus_openface.pkl'), 32, split='train')
    by_name_txt = dict(zip(txt.files, txt.labels))
    by_name_pkl = dict(zip(pkl.files, pkl.labels))
    assert set(by_name_txt) == set(by_name_pkl) and len(by_name_txt) == len(txt)
    for k in by_name_txt:
        assert torch.allclose(by_name_txt[k], by_name_pkl[k])
    assert 0 <= txt.labels.min() and txt.labels.max() <= 1
    # the emotion CSV holds the same training images
    emo = dl.emotion_dataset(str(synth / 'images'), str(synth / 'training.csv'), 32, c_dim=8)
    assert set(emo.files) == set(txt.files)
    meta = {}
    for line in (synth / 'meta.csv').read_text().splitlines()[1:]:
        name, _, _, _, expr = line.split(',')
        meta[name] = int(expr)
    assert all(meta[f] == int(c) for f, c in zip(emo.files, emo.labels))


def test_split_holds_out_test_images(synth):
    train = dl.au_dataset(str(synth / 'images'), str(synth / 'aus.txt'), 32, split='train')
    test = dl.au_dataset(str(synth / 'images'), str(synth / 'aus.txt'), 32, split='test')
    every = dl.au_dataset(str(synth / 'images'), str(synth / 'aus.txt'), 32, split='all')
    assert set(train.files).isdisjoint(test.files) and len(train) + len(test) == len(every) == 40


def test_dataset_item_range_and_label(synth):
    ds = dl.au_dataset(str(synth / 'images'), str(synth / 'aus.txt'), 48)
    x, y = ds[0]
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32
    assert -1 <= x.min() < x.max() <= 1
    assert y.shape == (17,)


def _write_table(path, lines):
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def test_header_detection_by_content(tmp_path):
    row = ' '.join(['0.5'] * 17)
    celeba = _write_table(tmp_path / 'a.txt', ['2', ' '.join(sf.AU_NAMES), f'x.jpg {row}', f'y.jpg {row}'])
    names, au_names, v = dl.read_au_table(celeba)
    assert names == ['x.jpg', 'y.jpg'] and au_names == sf.AU_NAMES and v.shape == (2, 17)
    plain = _write_table(tmp_path / 'b.txt', [f'x.jpg {row}'])
    assert dl.read_au_table(plain)[0] == ['x.jpg']
    with_title = _write_table(tmp_path / 'c.txt', ['file ' + ' '.join(f'{a}_r' for a in sf.AU_NAMES), f'x.jpg {row}'])
    assert dl.read_au_table(with_title)[1] == sf.AU_NAMES
    # a header after the data is no header: an error with its line number
    late = _write_table(tmp_path / 'd.txt', [f'x.jpg {row}', ' '.join(sf.AU_NAMES)])
    with pytest.raises(dl.DataError, match=r'd\.txt, line 2'):
        dl.read_au_table(late)


@pytest.mark.parametrize('bad, problem', [
    ('x.jpg ' + ' '.join(['0.5'] * 16), 'expected a file name and 17 AU values, found 16'),
    ('x.jpg ' + ' '.join(['0.5'] * 18), 'found 18'),
    ('x.jpg ' + ' '.join(['0.5'] * 16 + ['abc']), "'abc' is not a number"),
    ('x.jpg ' + ' '.join(['0.5'] * 16 + ['nan']), 'non-finite'),
    ('x.jpg ' + ' '.join(['0.5'] * 16 + ['7']), r'in \[0, 5\]'),
])
def test_malformed_rows_name_file_and_line(tmp_path, bad, problem):
    good = ' ' + ' '.join(['0.5'] * 17)
    path = _write_table(tmp_path / 'labels.txt', ['a.jpg' + good, 'b.jpg' + good, bad])
    with pytest.raises(dl.DataError, match=problem) as e:
        dl.read_au_table(path)
    assert 'labels.txt, line 3' in str(e.value)


def test_missing_image_names_the_file(synth, tmp_path):
    (tmp_path / 'images').mkdir()
    shutil.copy(synth / 'images' / '000000.png', tmp_path / 'images')
    path = _write_table(tmp_path / 'l.txt', ['000000.png ' + ' '.join(['1'] * 17),
                                             'nope.png ' + ' '.join(['1'] * 17)])
    with pytest.raises(dl.DataError, match='nope.png'):
        dl.au_dataset(str(tmp_path / 'images'), path, 32)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / 'img').mkdir()
    (tmp_path / 'img' / 'broken.png').write_bytes(b'not a png at all')
    path = _write_table(tmp_path / 'l.txt', ['broken.png ' + ' '.join(['1'] * 17)])
    ds = dl.au_dataset(str(tmp_path / 'img'), path, 32)
    with pytest.raises(dl.DataError, match='broken.png: cannot read image'):
        ds[0]


def test_any_image_mode_and_size_is_converted(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8), 'L').save(tmp_path / 'g.png')
    Image.fromarray(rng.integers(0, 255, (90, 40, 4), dtype=np.uint8), 'RGBA').save(tmp_path / 'a.png')
    Image.fromarray(rng.integers(0, 255, (200, 150, 3), dtype=np.uint8)).save(tmp_path / 'c.jpg')
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).convert('P').save(tmp_path / 'p.bmp')
    for fn in ('g.png', 'a.png', 'c.jpg', 'p.bmp'):
        arr = dl.load_image(str(tmp_path / fn), 64)
        assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    grey = dl.load_image(str(tmp_path / 'g.png'), 64)
    assert np.array_equal(grey[..., 0], grey[..., 1])


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_pickle_loader_refuses_code(tmp_path):
    path = tmp_path / 'evil.pkl'
    with open(path, 'wb') as f:
        pickle.dump({'x': _Evil()}, f)
    with pytest.raises(dl.DataError, match='refusing to load'):
        dl.read_au_pickle(str(path))


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_pickle_loader_reads_numpy_arrays(tmp_path, protocol):
    path = tmp_path / 'aus.pkl'
    d = {'a': np.arange(17, dtype=np.float32) / 4, 'b': np.ones(17)}
    with open(path, 'wb') as f:
        pickle.dump(d, f, protocol=protocol)
    ids, _, v = dl.read_au_pickle(str(path))
    assert ids == ['a', 'b'] and np.allclose(v[0], np.arange(17) / 4)


def test_emotion_csv_keeps_valid_codes_only(tmp_path):
    p = tmp_path / 'training.csv'
    p.write_text('subDirectory_filePath,expression,valence\n'
                 + ''.join(f'dir/{i}.jpg,{i},0.1\n' for i in range(11)))
    names, labels = dl.read_emotion_csv(str(p), c_dim=7)
    assert names == [f'{i}.jpg' for i in range(7)] and labels.tolist() == list(range(7))
    assert dl.read_emotion_csv(str(p), c_dim=8)[1].tolist() == list(range(8))
    p.write_text('subDirectory_filePath,expression\na.jpg,1\nb.jpg,happy\n')
    with pytest.raises(dl.DataError, match='line 3'):
        dl.read_emotion_csv(str(p), 7)
    p.write_text('path,label\na.jpg,1\n')
    with pytest.raises(dl.DataError, match='header'):
        dl.read_emotion_csv(str(p), 7)


def test_a_prepared_folder_of_labelled_and_unlabelled_sources_gives_its_labelled_crops_to_ganmut(tmp_path, capsys):
    """--mode prepare of a source with --source_labels and one without writes every crop to aus.txt and the
    labelled ones to training.csv: an emotion dataset takes those and says it left the others out; the same
    images in a folder that prepare did not write are refused as unlabelled."""
    (tmp_path / 'images').mkdir()
    for name in ('a.png', 'b.png', 'c.png'):
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / 'images' / name)
    dl.write_au_table(str(tmp_path / 'aus.txt'), ['a.png', 'b.png', 'c.png'], np.zeros((3, 17)))
    (tmp_path / 'training.csv').write_text('subDirectory_filePath,expression\na.png,1\n')
    with pytest.raises(dl.DataError, match='2 image'):
        dl.emotion_dataset(str(tmp_path / 'images'), str(tmp_path / 'training.csv'), 8, 7)
    (tmp_path / 'prepare_report.json').write_text('{}')
    ds = dl.emotion_dataset(str(tmp_path / 'images'), str(tmp_path / 'training.csv'), 8, 7)
    assert ds.files == ['a.png'] and ds.labels.tolist() == [1]
    assert 'note: 2 crops of ' in capsys.readouterr().out


def test_select_aus(synth):
    assert dl.select_aus(['AU12', 'au25', '1'], sf.AU_NAMES) == [8, 14, 0]
    with pytest.raises(ValueError, match='AU99'):
        dl.select_aus(['AU99'], sf.AU_NAMES)
    ds = dl.au_dataset(str(synth / 'images'), str(synth / 'aus.txt'), 32, aus=['AU25', 'AU12'])
    assert ds.labels.shape[1] == 2 and ds.label_names == ['AU25', 'AU12']
    names, au_names, values = dl.read_au_table(str(synth / 'aus.txt'))
    rows = [names.index(f) for f in ds.files]
    columns = [au_names.index('AU25'), au_names.index('AU12')]      # in the order asked for
    assert np.allclose(ds.labels.numpy(), values[rows][:, columns] / 5)
    assert ds.labels.std(0).min() > 0.05                              # columns that vary: a swap shows


def test_uint8_cache_is_rebuilt_when_an_image_or_a_label_changes(tmp_path):
    img_dir = tmp_path / 'images'
    img_dir.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(img_dir / f'{i}.png')

    def write_labels(v):
        (tmp_path / 'aus.txt').write_text('name AU01 AU12\n' + ''.join(f'{i}.png {v} 1.0\n' for i in range(3)))
    write_labels(2.0)
    cache_dir = tmp_path / 'cache'
    ds = dl.au_dataset(str(img_dir), str(tmp_path / 'aus.txt'), 8)
    first = dl.uint8_cache(ds, str(cache_dir), verbose=False)
    assert first[1].mean() == 40 and len(list(cache_dir.glob('*.u8'))) == 1
    again = dl.uint8_cache(ds, str(cache_dir), verbose=False)
    assert again.filename == first.filename                      # unchanged data: reused
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(img_dir / '1.png')
    os.utime(img_dir / '1.png', ns=(1, 1))                        # a rewritten file: another modification time
    changed = dl.uint8_cache(dl.au_dataset(str(img_dir), str(tmp_path / 'aus.txt'), 8), str(cache_dir), verbose=False)
    assert changed.filename != first.filename and changed[1].mean() == 200
    write_labels(3.0)
    relabelled = dl.uint8_cache(dl.au_dataset(str(img_dir), str(tmp_path / 'aus.txt'), 8), str(cache_dir), verbose=False)
    assert relabelled.filename != changed.filename
    assert len(list(cache_dir.glob('*.u8'))) == 1                 # stale versions removed


# --------------------------------------------------------------------------- repeat-factor sampling

def test_repeat_factors_of_emotions_and_of_au_steps():
    """sqrt(t / share) for a label rarer than t, else 1; an image takes its rarest label's factor."""
    emotions = torch.tensor([0] * 90 + [1] * 9 + [2])
    w = dl.repeat_factors(emotions, 0.1)
    assert torch.allclose(w[[0, 90, 99]], torch.tensor([1.0, (0.1 / 0.09) ** 0.5, 10 ** 0.5], dtype=torch.float64))
    aus = torch.zeros(100, 2)                       # AU / 5: 0.3 is the step 1-2, 0.7 the step 3-4, 1.0 the top
    aus[:20, 0] = 0.3
    aus[20:25, 0] = 0.7
    aus[:2, 1] = 1.0
    w = dl.repeat_factors(aus, 0.1)
    assert torch.allclose(w[2:20], torch.ones(18, dtype=torch.float64))          # a fifth of the images: common
    assert torch.allclose(w[20:25], torch.full((5,), 2 ** 0.5, dtype=torch.float64))  # 5%: sqrt(2)
    assert torch.allclose(w[:2], torch.full((2,), 5 ** 0.5, dtype=torch.float64))     # 2% at AU 5, over its step 1
    assert torch.equal(w[25:], torch.ones(75, dtype=torch.float64))                 # below AU 1: no label
    assert torch.equal(dl.repeat_factors(aus, 0.01), torch.ones(100, dtype=torch.float64))


def test_weighted_batches_are_drawn_by_the_weights_split_by_rank_and_the_same_on_resume():
    weights = torch.ones(50, dtype=torch.float64)
    weights[7] = 20.0                              # one image 20 times as likely as each other
    batches = torch.cat([dl.batch_indices(50, 8, it, seed=3, weights=weights) for it in range(2000)])
    share = (batches == 7).double().mean().item()
    assert abs(share - 20 / 69) < 0.02             # 20 / (49 + 20)
    assert torch.equal(dl.batch_indices(50, 8, 123, seed=3, weights=weights),
                       dl.batch_indices(50, 8, 123, seed=3, weights=weights))    # a pure function of the iteration
    assert not torch.equal(dl.batch_indices(50, 8, 123, seed=3, weights=weights),
                           dl.batch_indices(50, 8, 124, seed=3, weights=weights))
    parts = [dl.batch_indices(50, 4, 9, seed=3, rank=r, world=2, weights=weights) for r in range(2)]
    assert torch.equal(torch.cat(parts), dl.batch_indices(50, 8, 9, seed=3, weights=weights))


def test_the_solver_draws_images_and_targets_by_repeat_factors(tmp_path):
    from tiny import tiny_solver

    from solver import sample_targets
    plain = tiny_solver(tmp_path)
    assert plain.sample_weights is None and plain.target_weights is None
    solver = tiny_solver(tmp_path, '--repeat_threshold', '0.5')
    assert torch.equal(solver.sample_weights, dl.repeat_factors(solver.train_set.labels, 0.5))
    assert solver.sample_weights.min() >= 1 and solver.sample_weights.max() > 1
    _, aus = next(solver.batches(0))
    idx = dl.batch_indices(len(solver.train_set), solver.cfg.batch_size, 0, solver.cfg.seed,
                           weights=solver.sample_weights)
    assert torch.equal(aus, solver.labels[idx])
    rare = solver.sample_weights.argmax()           # targets: the rarest row comes up as often as its weight says
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat([sample_targets(solver.labels, 256, g, 0.0, solver.target_weights) for _ in range(100)])
    share = (drawn == solver.labels[rare]).all(1).double().mean().item()
    expected = (solver.sample_weights[rare] / solver.sample_weights.sum()).item()
    assert expected > 1 / len(solver.labels) + 0.008      # 0.0935 against a uniform draw's 0.0833
    assert abs(share - expected) < 0.005                  # 25,600 draws: a standard error of 0.0018
