"""Every flag and every label file checked at the door: a numeric flag outside its range, a missing file or
folder, and options that do not fit together end the run with one line naming the flag, the value and what
was expected, exit status 2, before anything is read or written; label files read alike whatever their
byte-order mark, line endings, tabs or encoding (or are refused naming the encoding)."""
import argparse
import codecs
import os
import re

import numpy as np
import pytest

import data_loader as dl
import main
import synthetic_faces as sf
from openface_utils.openface_csv import read_openface_csv
from utils.errors import DataError
from utils.text import read_lines


def numeric_flags():
    """(flag, kind, Range) of every numeric option the parser defines."""
    found = []
    for action in main.build_parser()._actions:
        valid = getattr(action.type, 'valid', None)
        if valid is not None and action.type.kind in (int, float):
            found.append((action.option_strings[-1], action.type.kind, valid))
    return found


def text_flags_with_a_format():
    """(flag, how its values are described) of every text option with a fixed set of values or a Pattern."""
    found = []
    for action in main.build_parser()._actions:
        if action.choices:
            found.append((action.option_strings[-1], 'invalid choice'))
        elif isinstance(getattr(action.type, 'valid', None), main.Pattern):
            found.append((action.option_strings[-1], 'must be ' + action.type.valid.words))
    return found


def invalid_value(kind, valid):
    """A value the range refuses: below its low end, above its high end, not finite, or not a power of two."""
    candidates = ['nan', 'inf', '-inf']
    if valid.lo is not None:
        candidates.insert(0, str(valid.lo - 1 if kind is int else valid.lo - 0.5))
    if valid.hi is not None:
        candidates.insert(0, str(valid.hi + 1))
    if valid.power_of_two:
        candidates.insert(0, '48')
    if kind is int:
        candidates = [c for c in candidates if c.lstrip('-').isdigit()] + ['2.5']
    for text in candidates:
        try:
            value = kind(text)
        except ValueError:
            return text
        if not valid.holds(value):
            return text
    raise AssertionError(f'no invalid value found for a {kind.__name__} in {valid.describe(kind)}')


def run_main(argv, tmp_path, capsys):
    """main() in an empty folder; (exit status, stderr, what it left in the folder)."""
    work = tmp_path / 'work'
    work.mkdir(exist_ok=True)
    before = os.getcwd()
    os.chdir(work)
    try:
        status = main.main(argv + ['--outputs_dir', 'o', '--synthetic_dir', 's'])
    finally:
        os.chdir(before)
    return status, capsys.readouterr().err, sorted(os.listdir(work))


def test_every_numeric_flag_has_a_range_and_every_default_lies_in_it():
    flags = numeric_flags()
    assert len(flags) >= 60, len(flags)      # every int and float option of FLAG_GROUPS
    numeric = {f for title, group in main.FLAG_GROUPS for f, default, *_ in group
               if (main.KINDS.get(f) or type(default)) in (int, float)}
    assert {f for f, _, _ in flags} == numeric
    by_name = {f[2:]: (kind, valid) for f, kind, valid in flags}
    presets = [{f[2:]: d for _, group in main.FLAG_GROUPS for f, d, *_ in group}, main.DEMO, main.GANMUT_DEFAULTS,
               main.GANMUT_DEMO]
    for preset in presets:
        for name, value in preset.items():
            if name in by_name and value is not None:
                kind, valid = by_name[name]
                assert isinstance(value, kind) and valid.holds(value), (name, value, valid.describe(kind))


def test_a_numeric_flag_without_a_range_cannot_be_added(monkeypatch):
    groups = main.FLAG_GROUPS + [('new', [('--new_weight', 1.0, 'a new loss weight')])]
    monkeypatch.setattr(main, 'FLAG_GROUPS', groups)
    with pytest.raises(TypeError, match='--new_weight'):
        main.build_parser()


@pytest.mark.parametrize('flag, kind, valid', numeric_flags(), ids=lambda v: v if isinstance(v, str) else '')
def test_an_invalid_value_of_each_numeric_flag_is_refused_before_anything_is_written(flag, kind, valid, tmp_path,
                                                                                       capsys):
    value = invalid_value(kind, valid)
    status, err, left = run_main(['--mode', 'demo', flag, value], tmp_path, capsys)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {flag} {value}: must be '), err
    assert valid.describe(kind) in lines[0]
    assert left == []


@pytest.mark.parametrize('flag, words', text_flags_with_a_format())
def test_a_bad_value_of_each_text_flag_with_a_format_is_refused_before_anything_is_written(flag, words, tmp_path,
                                                                                             capsys):
    status, err, left = run_main(['--mode', 'demo', flag, 'no_such_value'], tmp_path, capsys)
    assert status == 2 and left == []
    assert len(err.strip().splitlines()) == 1 and err.startswith(f'error: {flag}') and words in err, err


def test_text_formats_hold_what_they_say():
    assert all(main.DEVICE.holds(v) for v in ['auto', 'cpu', 'cuda', 'cuda:1'])
    assert not any(main.DEVICE.holds(v) for v in ['gpu', 'CUDA', 'cuda:', 'cuda:x', ''])
    assert all(main.RESUME_POINT.holds(v) for v in ['', 'none', 'auto', 'Latest', '0', '2500'])
    assert not any(main.RESUME_POINT.holds(v) for v in ['-3', 'last', '25k', '1.5'])


@pytest.mark.parametrize('kind, valid, inside, outside, words', [
    (int, main.COUNT, [1, 7], [0, -3], 'an integer >= 1'),
    (float, main.RATE, [1e-9, 2.0], [0.0, -1.0, float('nan'), float('inf')], 'a finite number > 0'),
    (float, main.DECAY, [0.0, 0.999], [1.0, -0.1], 'a finite number in [0, 1)'),
    (int, main.Range(32, power_of_two=True), [32, 256], [16, 48, 100], 'a power of two >= 32'),
    (float, main.Range(0, also=[-1]), [-1.0, 0.0, 5.0], [-0.5, -2.0], '-1 or a finite number >= 0'),
])
def test_ranges_hold_what_they_say(kind, valid, inside, outside, words):
    assert all(valid.holds(v) for v in inside) and not any(valid.holds(v) for v in outside)
    assert valid.describe(kind) == words


@pytest.mark.parametrize('argv, words', [
    (['--mode', 'fly'], '--mode: invalid choice'),
    (['--batch_size', 'many'], '--batch_size many: must be an integer >= 1'),
    (['--no_such_flag', '1'], 'unrecognized arguments: --no_such_flag'),
    (['--image_size', '32', '--d_repeat_num', '6'], '--d_repeat_num 6 halves the image 6 times'),
    (['--d_repeat_num', '4', '--d_local_head', '4'], '--d_local_head must be 0 (off) or a critic layer from 1 to 3'),
])
def test_other_bad_command_lines_get_one_line_and_status_2(argv, words, tmp_path, capsys):
    status, err, left = run_main(['--mode', 'demo'] + argv, tmp_path, capsys)
    assert status == 2 and left == []
    assert len(err.strip().splitlines()) == 1 and words in err, err


@pytest.mark.parametrize('name', sorted(main.INPUT_PATHS))
def test_a_missing_file_or_folder_names_the_flag_the_path_and_what_was_expected(name, tmp_path, capsys):
    kind, expected = main.INPUT_PATHS[name]
    missing = str(tmp_path / 'not_here')
    mode = 'test' if name.startswith('test_') else 'train'
    status, err, left = run_main(['--mode', mode, f'--{name}', missing], tmp_path, capsys)
    assert status == 2 and left == []
    assert err.strip() == f'error: --{name} {missing}: no such {kind}; expected {expected}', err


def test_a_file_where_a_folder_is_expected_and_the_reverse(tmp_path, capsys):
    a_file = tmp_path / 'aus.txt'
    a_file.write_text('x')
    status, err, left = run_main(['--mode', 'train', '--image_dir', str(a_file)], tmp_path, capsys)
    assert status == 2 and 'a file, not a folder' in err and '--image_dir' in err
    status, err, left = run_main(['--mode', 'test', '--test_attributes_path', str(tmp_path)], tmp_path, capsys)
    assert status == 2 and 'a folder, not a file' in err and '--test_attributes_path' in err


# ------------------------------------------------------------------------------------------ label files

AU_HEADER = 'name ' + ' '.join(sf.AU_NAMES)
AU_ROWS = [f'{i}.png ' + ' '.join(f'{(i + k) % 6 * 0.8:.1f}' for k in range(len(sf.AU_NAMES))) for i in range(3)]


def saved_as(lines, newline='\n', encoding='utf-8', bom=b'', tabs=False, trailing=''):
    """The bytes an editor or spreadsheet export would write for these lines."""
    if tabs:
        lines = [line.replace(' ', '\t') for line in lines]
    text = newline.join(line + trailing for line in lines) + newline
    return bom + text.encode(encoding)


SAVED = {
    'plain': {},
    'utf8_bom': {'bom': codecs.BOM_UTF8},
    'crlf': {'newline': '\r\n'},
    'cr': {'newline': '\r'},
    'bom_crlf_tabs': {'bom': codecs.BOM_UTF8, 'newline': '\r\n', 'tabs': True},
    'trailing_spaces': {'trailing': '  \t'},
    'utf16_le_bom': {'encoding': 'utf-16-le', 'bom': codecs.BOM_UTF16_LE, 'newline': '\r\n'},
    'utf16_be_bom': {'encoding': 'utf-16-be', 'bom': codecs.BOM_UTF16_BE},
    'utf16_le_no_bom': {'encoding': 'utf-16-le'},
    'utf32_bom': {'encoding': 'utf-32-le', 'bom': codecs.BOM_UTF32_LE},
}


@pytest.mark.parametrize('header', [[AU_HEADER], []], ids=['header', 'no_header'])
@pytest.mark.parametrize('how', sorted(SAVED))
def test_au_tables_and_sequences_read_alike_however_they_were_saved(how, header, tmp_path):
    plain = tmp_path / 'plain.txt'
    plain.write_bytes(saved_as(header + AU_ROWS))
    other = tmp_path / f'{how}.txt'
    other.write_bytes(saved_as(header + AU_ROWS, **SAVED[how]))
    names, au_names, values = dl.read_au_table(str(other))
    expected = dl.read_au_table(str(plain))
    assert names == expected[0] == ['0.png', '1.png', '2.png']
    assert au_names == expected[1] == list(sf.AU_NAMES)
    np.testing.assert_array_equal(values, expected[2])
    assert values[1, 0] == pytest.approx(0.8)


@pytest.mark.parametrize('how', sorted(SAVED))
def test_emotion_csvs_read_alike_however_they_were_saved(how, tmp_path):
    rows = ['subDirectory_filePath,expression', 'a/0.png,1', 'b\\1.png,3', '2.png,0']
    if SAVED[how].get('tabs'):
        rows = [r.replace(',', ',\t') for r in rows]
    path = tmp_path / f'{how}.csv'
    path.write_bytes(saved_as(rows, **dict(SAVED[how], tabs=False)))
    names, labels = dl.read_emotion_csv(str(path), 7)
    assert names == ['0.png', '1.png', '2.png'] and labels.tolist() == [1, 3, 0]


def test_openface_csv_with_a_bom_and_crlf_reads_like_a_plain_one(tmp_path):
    header = ['face', 'confidence', 'success'] + [f'{a}_r' for a in sf.AU_NAMES]
    rows = [', '.join(header), ', '.join(['0', '0.98', '1'] + ['1.5'] * len(sf.AU_NAMES))]
    plain, windows = tmp_path / 'plain.csv', tmp_path / 'windows.csv'
    plain.write_bytes(saved_as(rows))
    windows.write_bytes(saved_as(rows, newline='\r\n', bom=codecs.BOM_UTF8))
    a, b = read_openface_csv(str(plain)), read_openface_csv(str(windows))
    assert len(a.rows) == len(b.rows) == 1
    np.testing.assert_array_equal(a.rows[0].aus, b.rows[0].aus)


def test_an_au_table_with_a_bom_labels_every_image_of_its_dataset(tmp_path):
    """The case that used to make the first image 'unlabelled'."""
    sf.write_dataset(str(tmp_path / 'd'), num_images=6, image_size=32, seed=1, verbose=False)
    table = (tmp_path / 'd' / 'aus.txt').read_bytes()
    bom = tmp_path / 'd' / 'aus_bom.txt'
    bom.write_bytes(codecs.BOM_UTF8 + table.replace(b'\n', b'\r\n'))
    data = dl.au_dataset(str(tmp_path / 'd' / 'images'), str(bom), 32, 'all')
    plain = dl.au_dataset(str(tmp_path / 'd' / 'images'), str(tmp_path / 'd' / 'aus.txt'), 32, 'all')
    assert len(data) == len(plain) == 6
    np.testing.assert_array_equal(data.labels, plain.labels)


@pytest.mark.parametrize('data, words, line', [
    ('0.png 1\ncaf\u00e9.png 2\n'.encode('latin-1'), 'not UTF-8 text (byte 0xe9); it looks like Latin-1', 2),
    (b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00', 'contains zero bytes', None),
    (codecs.BOM_UTF16_LE + b'\x00\xd8a\x00', 'UTF-16 LE byte-order mark but is not valid UTF-16 LE', None),
])
def test_text_in_another_encoding_is_refused_naming_it(data, words, line, tmp_path):
    path = tmp_path / 'labels.txt'
    path.write_bytes(data)
    with pytest.raises(DataError, match=re.escape(words)) as e:
        read_lines(str(path))
    assert e.value.path == str(path) and e.value.line == line


def test_numeric_flag_types_carry_their_range():
    """What numeric_flags() reads: build_parser's type of a numeric flag knows its kind and range."""
    action = next(a for a in main.build_parser()._actions if '--batch_size' in a.option_strings)
    assert action.type.kind is int and action.type.valid is main.COUNT
    assert action.type('3') == 3
    with pytest.raises(argparse.ArgumentTypeError, match='must be an integer >= 1'):
        action.type('0')
