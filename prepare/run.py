"""--mode prepare: every photo and video of --source -> a dataset folder train mode reads.

    OUT/images/<name>[_f<frame>][_face<k>].jpg   aligned crops at --image_size, framed by --face_framing
    OUT/aus.txt                                   17 AUs per crop, read by editing/au_reader.py
    OUT/train_ids.csv, OUT/test_ids.csv           the split, whole identities on one side (prepare/labels.py)
    OUT/training.csv, OUT/test.csv                with --source_labels: GANmut's emotion CSVs
    OUT/framing.json                              the framing of the crops (train mode records it)
    OUT/prepare_report.json                       what was read, kept and rejected, and why

The work is shared by worker processes (one per core), one photo or video at a time. Each finished source is
appended to OUT/.prepare/journal.jsonl; a run that is stopped (Ctrl-C, SIGTERM, kill -9) and started again
with the same command reads the journal and goes on with the sources not yet in it. The dataset's files are
written when every source is done, each atomically.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os

import numpy as np
from PIL import Image

from prepare import labels
from prepare import sources as src

JOURNAL = os.path.join('.prepare', 'journal.jsonl')
SETTINGS = os.path.join('.prepare', 'settings.json')
JPEG_QUALITY = 95
THUMB = 64                # rejected faces are kept this small, for the report's contact sheet


# --------------------------------------------------------------------------- the workers

def work_loop(jobs, results, settings, parent):
    """A worker process: the detector on one thread, its own AU reader, one source at a time. Ctrl-C is the
    main process's to handle; a worker whose main process was killed stops after its current source."""
    import signal

    import torch

    from editing import au_reader, landmarks
    from editing import framing as fr
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    results.cancel_join_thread()       # exit even when nobody reads the results any more
    torch.set_num_threads(1)
    landmarks.THREADS = 1
    framing = fr.framing_from(settings['face_framing'])
    with au_reader.Reader(why='--mode prepare') as reader:
        for job in iter(jobs.get, None):
            if os.getppid() != parent:
                return
            try:
                results.put(do_source(job, settings, framing, reader))
            except Exception as e:       # never lose a run to one file: the source is reported with the error
                results.put({**job, 'status': 'error', 'reason': f'{type(e).__name__}: {e}', 'faces': []})


def do_source(job, settings, framing, reader):
    """One photo or video -> its record (what the journal holds); its kept crops are written."""
    if job['kind'] == 'photo':
        try:
            pixels, note = src.read_photo(job['path'])
        except src.Rejected as e:
            return {**job, 'status': 'rejected', 'reason': str(e), 'faces': []}
        faces = face_records(pixels, job['name'], settings, framing, reader)
        rec = {**job, 'status': 'read', 'note': note, 'sha1': file_sha1(job['path']),
               'size': [int(pixels.shape[1]), int(pixels.shape[0])], 'faces': faces}
        if not faces:
            rec['status'], rec['reason'] = 'rejected', 'no face found (RetinaFace, faces from about 16 px)'
        return rec
    return do_video(job, settings, framing, reader)


def do_video(job, settings, framing, reader):
    from editing import video
    try:
        frames, fps, _ = video.frames(job['path'], why='--mode prepare')
    except Exception as e:
        return {**job, 'status': 'rejected', 'reason': str(e).split(': ', 1)[-1], 'faces': []}
    every = max(1, round(fps / settings['prepare_fps']))
    faces, read = [], 0
    for k, frame in enumerate(frames):
        if k % every:
            continue
        read += 1
        faces += face_records(frame, f'{job["name"]}_f{k:06d}', settings, framing, reader, frame=k)
    rec = {**job, 'status': 'read', 'frames': read, 'fps': fps, 'faces': faces}
    if not faces:
        rec['status'], rec['reason'] = 'rejected', f'no face found in its {read} sampled frames'
    return rec


def face_records(pixels, stem, settings, framing, reader, frame=None):
    """The faces of one photo or frame: kept crops written to images/, rejected ones as thumbnails."""
    from prepare.faces import faces_of
    found = faces_of(pixels, framing, settings['image_size'], reader)
    out = []
    for k, face in enumerate(found, 1):
        name = stem if len(found) == 1 else f'{stem}_face{k}'
        rec = {'name': name, 'reason': face.reason, 'why': face.why, 'box_area': face.box_area,
               'centre': [round(c, 1) for c in face.centre], 'upscale': round(face.upscale, 3),
               'turn': round(face.turn, 3), 'padded': round(face.padded, 4), 'frame': frame}
        if face.reason:
            save_jpeg(face.crop, os.path.join(settings['out'], '.prepare', 'rejected', f'{name}.jpg'), THUMB)
        else:
            rec['aus'] = [round(float(v), 3) for v in face.aus]
            rec['thumb'] = thumb(face.crop)
            save_jpeg(face.crop, os.path.join(settings['out'], 'images', f'{name}.jpg'))
        out.append(rec)
    return out


def save_jpeg(pixels, path, side=None):
    """Atomically (a partial file is never left under the final name)."""
    im = Image.fromarray(pixels)
    if side:
        im = im.resize((side, side), Image.BILINEAR)
    tmp = path + '.tmp'
    im.save(tmp, format='JPEG', quality=JPEG_QUALITY)
    os.replace(tmp, path)


def file_sha1(path):
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def thumb(crop, side=16):
    """The crop's grey levels at side x side, as hex: near duplicates are within a few levels of each other."""
    return np.asarray(Image.fromarray(crop).convert('L').resize((side, side), Image.BOX), np.uint8).tobytes().hex()


# --------------------------------------------------------------------------- the journal

def read_journal(out):
    """{source path: record} of the sources a previous run finished (a last line cut by a kill is left out)."""
    path = os.path.join(out, JOURNAL)
    done = {}
    if os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                done[rec['path']] = rec
    return done


def crops_lost(out, rec):
    """Whether a finished source's kept crop is in neither images/ nor .prepare/set_aside/ (deleted by hand,
    or a folder copied without them): the source is done again rather than listed without its file."""
    return any(not f['reason'] and not any(os.path.exists(os.path.join(out, d, f'{f["name"]}.jpg'))
                                           for d in ('images', os.path.join('.prepare', 'set_aside')))
               for f in rec['faces'])


def cut_partial_line(path):
    """A kill during a write leaves a last line without its end: it is cut off before appending."""
    if not os.path.exists(path):
        return
    with open(path, 'rb+') as f:
        data = f.read()
        if data and not data.endswith(b'\n'):
            f.truncate(data.rfind(b'\n') + 1)


def check_settings(out, settings):
    """The first run writes its settings; a later one must have the same (else the crops would differ)."""
    path = os.path.join(out, SETTINGS)
    if os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            before = json.load(f)
        changed = [k for k in settings if k != 'out' and before.get(k) != settings[k]]
        if changed:
            from utils.errors import FlagError
            raise FlagError(f'--dataset {out} was prepared with ' + ', '.join(
                f'--{k} {before.get(k)}' for k in changed) + ': give the same values to go on, or another --dataset')
        return
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump({k: v for k, v in settings.items() if k != 'out'}, f, indent=1)
    os.replace(tmp, path)


def run_sources(todo, settings, workers, journal, progress):
    """Share `todo` (job dicts) among `workers` processes; each finished record is appended to the journal.
    SIGINT or SIGTERM: the workers stop, what is in the journal stays, and the same command goes on."""
    import signal

    from solver import StopSignals
    from utils.errors import TrainingInterrupted
    ctx = mp.get_context('spawn')        # MediaPipe and onnxruntime start their own threads: no fork
    jobs, results = ctx.Queue(), ctx.Queue()
    for job in todo:
        jobs.put(job)
    procs = [ctx.Process(target=work_loop, args=(jobs, results, settings, os.getpid()), daemon=True)
             for _ in range(workers)]
    for p in procs:
        jobs.put(None)
        p.start()
    try:
        with StopSignals(then='stopping after this source; the same command goes on') as stop:
            for done in range(len(todo)):
                rec = get_result(results, procs)
                journal.write(json.dumps(rec) + '\n')
                journal.flush()
                progress(rec)
                if stop.signum:
                    raise TrainingInterrupted(
                        f'{signal.Signals(stop.signum).name}: stopped after {done + 1} of {len(todo)} sources; '
                        f'the same command goes on from {os.path.join(settings["out"], JOURNAL)}', 128 + stop.signum)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()


def get_result(results, procs):
    """The next record; an error naming the worker if every worker died (e.g. out of memory)."""
    import queue
    while True:
        try:
            return results.get(timeout=5)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                raise RuntimeError('every prepare worker stopped: ' + ', '.join(
                    f'exit code {p.exitcode}' for p in procs)) from None


# --------------------------------------------------------------------------- the whole run

NEAR_RMS = 12.0   # grey levels between two crops' thumbnails under which they are near duplicates
GANMUT_EMOTIONS = 7   # GANmut's default --c_dim: neutral ... anger (contempt, the eighth, is reported)


def prepare(cfg, workers=None, log=print):
    """The whole command; returns the report. A finished dataset is left as it is, and said so."""
    from editing import au_reader, landmarks
    from editing import framing as fr
    from utils.errors import UserError
    landmarks._session('--mode prepare')      # says what to install, before anything is read or written
    if not au_reader.available():
        raise UserError(f'--mode prepare reads AUs with the AU reader, an optional dependency: {au_reader.INSTALL_HINT}')
    out = cfg.dataset
    framing = fr.framing_from(cfg.face_framing if cfg.face_framing != 'auto' else 'openface')
    settings = {'image_size': cfg.image_size, 'face_framing': framing.spec(), 'prepare_fps': cfg.prepare_fps,
                'out': out}
    for sub in ('images', os.path.join('.prepare', 'rejected')):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    check_settings(out, settings)
    found, other = src.find_sources(cfg.source)
    if not found:
        from utils.errors import MissingInput
        raise MissingInput('--source ' + ' '.join(cfg.source) + ': no photos or videos found')
    done = read_journal(out)
    lost = [path for path, rec in done.items() if crops_lost(out, rec)]
    for path in lost:
        del done[path]
    if lost:
        log(f'{out}: {len(lost)} source(s) whose kept crops are gone from images/ are prepared again '
            f'(e.g. {lost[0]})')
    todo = [{'path': s.path, 'kind': s.kind, 'rel': s.rel, 'name': s.name} for s in found if s.path not in done]
    report_path = os.path.join(out, 'prepare_report.json')
    if not todo and os.path.exists(report_path):
        with open(report_path, encoding='utf-8') as f:
            report = json.load(f)
        if report.get('inputs') == inputs_of(cfg, found):
            log(f'{out}: already prepared from these {len(found)} sources (prepare_report.json); nothing to do')
            return report
    if done:
        log(f'{out}: going on from an earlier run: {len(done)} of {len(found)} sources done')
    cut_partial_line(os.path.join(out, JOURNAL))
    with open(os.path.join(out, JOURNAL), 'a', encoding='utf-8') as journal:
        run_with_progress(todo, settings, workers or max(1, min(len(todo), os.cpu_count() or 1)), journal,
                          len(found), len(done))
    records = read_journal(out)
    return finish(cfg, framing, [records[s.path] for s in found], other, log, inputs_of(cfg, found))


def inputs_of(cfg, found):
    """What the dataset's files depend on beyond the crops: a change re-makes them (without new crops)."""
    return {'sources': [s.path for s in found], 'identity_regex': cfg.identity_regex,
            'test_fraction': cfg.test_fraction, 'seed': cfg.seed, 'source_labels': cfg.source_labels,
            'labels_sha1': file_sha1(cfg.source_labels) if cfg.source_labels else None,
            'openface_dir': cfg.openface_dir}


def run_with_progress(todo, settings, workers, journal, total, already):
    from tqdm import tqdm
    if not todo:
        return
    bar = tqdm(total=total, initial=already, desc='prepare', unit='source', dynamic_ncols=True)
    kept = [0]

    def progress(rec):
        kept[0] += sum(1 for f in rec['faces'] if not f['reason'])
        bar.update(1)
        bar.set_postfix(faces_kept=kept[0])
    try:
        run_sources(todo, settings, workers, journal, progress)
    finally:
        bar.close()


def finish(cfg, framing, records, other, log, inputs):
    """Duplicates, labels and the split over every record; the dataset's files and the report."""
    faces = mark_duplicates(records)
    if cfg.openface_dir:
        apply_openface(cfg.openface_dir, records)
    labelled = apply_labels(cfg, records) if cfg.source_labels else None
    kept, identities = [], []
    for r in records:
        who = labels.identity_of(src.Source(r['path'], r['kind'], r['rel'], r['name']), cfg.identity_regex)
        for f in r['faces']:
            if not f['reason']:
                kept.append(f)
                identities.append(who)
    held = labels.split_by_identity(identities, cfg.test_fraction, cfg.seed)
    out = cfg.dataset
    remove_unkept(out, faces)
    names = [f'{f["name"]}.jpg' for f in kept]
    write_text(os.path.join(out, 'aus.txt'), ''.join(
        f'{n} ' + ' '.join(f'{v:.2f}' for v in f['aus']) + '\n' for n, f in zip(names, kept)))
    write_text(os.path.join(out, 'train_ids.csv'), ''.join(f'{n}\n' for n, h in zip(names, held) if not h))
    write_text(os.path.join(out, 'test_ids.csv'), ''.join(f'{n}\n' for n, h in zip(names, held) if h))
    if labelled is not None:
        for fn, side in (('training.csv', False), ('test.csv', True)):
            write_text(os.path.join(out, fn), 'subDirectory_filePath,expression\n' + ''.join(
                f'{n},{f["emotion"]}\n' for n, f, h in zip(names, kept, held) if h == side))
    from editing import framing as fr
    fr.write_framing(framing, os.path.join(out, 'framing.json'))
    report = build_report(cfg, records, faces, other, held, labelled, len(set(identities)))
    report['inputs'] = inputs
    write_text(os.path.join(out, 'prepare_report.json'), json.dumps(report, indent=1))
    report_picture(out, faces, report, cfg.seed)
    for line in describe(report):
        log(line)
    return report


def mark_duplicates(records):
    """Every face record in source order; a photo with the same bytes as an earlier one, and a crop near an
    earlier kept crop (near_duplicates), get their reason."""
    first = {}
    for r in records:
        sha = r.get('sha1')
        if sha and r['status'] == 'read':
            if sha in first:
                r['status'], r['reason'] = 'duplicate', f'the same file as {first[sha]}'
                for f in r['faces']:
                    if not f['reason']:
                        f['reason'], f['why'] = f'exact duplicate of {first[sha]}', 'exact duplicate'
            else:
                first[sha] = r['rel']
    faces = [f for r in records for f in r['faces']]
    kept = [f for f in faces if not f['reason']]
    for j, i in near_duplicates([f['thumb'] for f in kept]).items():
        kept[j]['reason'], kept[j]['why'] = f'near duplicate of {kept[i]["name"]}', 'near duplicate'
    return faces


def near_duplicates(thumbs, chunk=2048):
    """{j: i} for each crop j whose 16 x 16 grey thumbnail is within NEAR_RMS grey levels (root mean
    square) of an earlier crop i that is itself kept. Measured on muxspace's photos: a photo re-encoded at
    JPEG quality 60 and scaled to 80 % lands 2-10 levels from its crop (95 % of them), at most 18.5;
    the nearest other photo 24 or more (docs/data.md)."""
    if not thumbs:
        return {}
    x = np.stack([np.frombuffer(bytes.fromhex(t), np.uint8) for t in thumbs]).astype(np.float32)
    sq = (x * x).sum(1)
    limit = NEAR_RMS ** 2 * x.shape[1]
    pairs = []
    for s in range(0, len(x), chunk):
        d = sq[s:s + chunk, None] + sq[None] - 2 * x[s:s + chunk] @ x.T        # squared distances
        rows, cols = np.nonzero(d <= limit)
        keep = cols > rows + s
        pairs += zip((rows[keep] + s).tolist(), cols[keep].tolist())
    dropped = {}
    for i, j in sorted(pairs):
        if i not in dropped and j not in dropped:
            dropped[j] = i
    return dropped


def apply_openface(openface_dir, records):
    """--openface_dir: each kept face of a photo takes its AUs from OpenFace's FaceLandmarkImg CSV of that
    photo (`<photo name>.csv`, anywhere under the folder; openface_utils reads it): the row whose landmarks'
    centre is nearest the face's box centre, within half the box's side (a single row and face match
    without landmark columns). A face with no row, and video frames, are set aside, saying so."""
    from openface_utils.convert import find_csvs
    from openface_utils.openface_csv import read_openface_csv
    csvs = {os.path.splitext(os.path.basename(p))[0].lower(): p for p in find_csvs(openface_dir)}
    for r in records:
        live = [f for f in r['faces'] if not f['reason']]
        if live and r['kind'] == 'video':          # one scale of AUs in a dataset: OpenFace's static ones
            for f in live:
                f['why'] = 'no OpenFace row'
                f['reason'] = ('a video frame: with --openface_dir the AUs are FaceLandmarkImg\'s, of photos '
                               '(FeatureExtraction calibrates per person)')
            continue
        if not live:
            continue
        csv_path = csvs.get(os.path.splitext(os.path.basename(r['path']))[0].lower())
        rows = read_openface_csv(csv_path).rows if csv_path else []
        for f in live:
            row = openface_row(f, rows, len(live))
            if row is None:
                f['why'] = 'no OpenFace row'
                f['reason'] = (f'no row of {os.path.basename(csv_path)} at this face' if csv_path else
                               f'no OpenFace CSV for {os.path.basename(r["path"])} in {openface_dir}')
            else:
                f['aus'], f['au_source'] = [round(float(v), 3) for v in row.aus], 'openface'


def openface_row(face, rows, faces_in_photo):
    if len(rows) == 1 and faces_in_photo == 1 and rows[0].centre is None:
        return rows[0]
    placed = [r for r in rows if r.centre is not None]
    if not placed:
        return None
    best = min(placed, key=lambda r: np.hypot(r.centre[0] - face['centre'][0], r.centre[1] - face['centre'][1]))
    side = np.sqrt(face['box_area'])
    return best if np.hypot(best.centre[0] - face['centre'][0], best.centre[1] - face['centre'][1]) <= side / 2 \
        else None


def apply_labels(cfg, records):
    """With --source_labels: each kept face gets its photo's emotion (the largest face of a photo takes
    it, the others are set aside), or a reason; returns what the report says of the labels."""
    from synthetic_faces import EMOTIONS
    rows, problems = labels.read_source_labels(cfg.source_labels)
    used, outside = set(), {}
    for r in records:
        key = os.path.basename(r['path']).lower()
        row = rows.get(key)
        used.add(key)
        live = [f for f in r['faces'] if not f['reason']]
        if not live:
            continue
        if row is None:
            for f in live:
                f['reason'], f['why'] = f'no label row in {os.path.basename(cfg.source_labels)}', 'no label row'
            continue
        index, cell, _ = row
        if index is None or index >= GANMUT_EMOTIONS:
            outside[cell.lower()] = outside.get(cell.lower(), 0) + 1
            for f in live:
                f['reason'] = f'emotion {cell!r} is not one of ' + ', '.join(EMOTIONS[:GANMUT_EMOTIONS])
                f['why'] = 'emotion not one of the seven'
            continue
        largest = max(live, key=lambda f: f['box_area'])
        for f in live:
            if f is largest:
                f['emotion'] = index
            else:
                f['reason'] = 'another face of a photo labelled for one face (the largest took the label)'
                f['why'] = 'another face of a labelled photo'
    missing = sorted(k for k in rows if k not in used)
    return {'rows': len(rows), 'problems': [f'line {line}: {p}' for line, p in problems],
            'rows_naming_missing_files': missing, 'outside_the_emotions': outside}


def remove_unkept(out, faces):
    """Crops set aside after they were written (duplicates, labels) move from images/ to .prepare/set_aside/
    (with a thumbnail for the report); one kept again by a later run (say, a labels file with its row
    added) moves back."""
    aside = os.path.join(out, '.prepare', 'set_aside')
    os.makedirs(aside, exist_ok=True)
    for f in faces:
        path, parked = (os.path.join(d, f'{f["name"]}.jpg') for d in (os.path.join(out, 'images'), aside))
        if f['reason'] and os.path.exists(path):
            with Image.open(path) as im:
                save_jpeg(np.asarray(im.convert('RGB')), os.path.join(out, '.prepare', 'rejected', f'{f["name"]}.jpg'),
                          THUMB)
            os.replace(path, parked)
        elif not f['reason'] and not os.path.exists(path) and os.path.exists(parked):
            os.replace(parked, path)


def write_text(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(tmp, path)


def build_report(cfg, records, faces, other, held, labelled, n_identities):
    from collections import Counter
    from synthetic_faces import AU_NAMES, EMOTIONS
    kept = [f for f in faces if not f['reason']]
    photos = [r for r in records if r['kind'] == 'photo']
    reasons = Counter(r['reason'] for r in records if r['status'] != 'read')
    face_reasons = Counter(f['why'] for f in faces if f['reason'])
    aus = np.array([f['aus'] for f in kept]) if kept else np.zeros((0, 17))
    padded = np.array([f['padded'] for f in kept]) if kept else np.zeros(0)
    report = {
        'sources': {'photos': len(photos), 'videos': len(records) - len(photos),
                    'photos_with_a_kept_face': sum(any(not f['reason'] for f in r['faces']) for r in photos),
                    'frames_read': sum(r.get('frames', 0) for r in records), 'not_read': dict(reasons),
                    'other_files': [{'path': p, 'reason': why} for p, why in other]},
        'faces': {'found': len(faces), 'kept': len(kept), 'rejected': dict(face_reasons),
                  'aus_from': dict(Counter(f.get('au_source', 'the AU reader') for f in kept)),
                  'train': int((~held).sum()), 'test': int(held.sum()), 'identities': n_identities},
        'padded_share': {'mean': float(padded.mean()) if len(padded) else 0.0,
                         'p90': float(np.percentile(padded, 90)) if len(padded) else 0.0,
                         'crops_with_padding': int((padded > 0).sum())},
        'au_means': dict(zip(AU_NAMES, aus.mean(0).round(3).tolist())) if len(kept) else {},
        'notes': dict(Counter(r['note'] for r in records if r.get('note'))),
        'rejected_files': [{'path': r['path'], 'reason': r['reason']} for r in records if r['status'] != 'read'],
        'rejected_faces': [{'name': f['name'], 'reason': f['reason']} for f in faces if f['reason']],
    }
    if labelled is not None:
        report['labels'] = {**labelled, 'kept_per_emotion': dict(Counter(EMOTIONS[f['emotion']] for f in kept))}
    return report


def describe(report):
    s, f = report['sources'], report['faces']
    lines = [f'prepare: {s["photos"]} photos ({s["photos_with_a_kept_face"]} with a kept face), {s["videos"]} videos '
             f'({s["frames_read"]} frames read); {f["found"]} faces found, {f["kept"]} kept '
             f'({f["train"]} train / {f["test"]} test, {f["identities"]} identities)']
    for reason, n in sorted(f['rejected'].items(), key=lambda kv: -kv[1]):
        lines.append(f'  faces set aside: {n} {reason}')
    for reason, n in sorted(s['not_read'].items(), key=lambda kv: -kv[1]):
        lines.append(f'  files not used: {n} {reason}')
    return lines


# --------------------------------------------------------------------------- the report's picture

SHEET_COLUMNS, SHEET_ROWS, CELL = 8, 6, 64
SHORT = {'face too small': 'too small', 'turned too far': 'turned', 'crop past the edge': 'past edge',
         'the AU reader found no face in the crop': 'no AU read', 'near duplicate': 'near dup',
         'exact duplicate': 'duplicate', 'no label row': 'no label', 'emotion not one of the seven': 'emotion',
         'another face of a labelled photo': 'other face'}      # what fits under a thumbnail


def report_picture(out, faces, report, seed=0):
    """prepare_report.png: kept crops (a seeded sample) beside rejected faces with their reasons, over
    the counts and the mean of each AU."""
    from PIL import ImageDraw
    kept = [f for f in faces if not f['reason']]
    rejected = [f for f in faces if f['reason']]
    rng = np.random.default_rng(seed)
    n = SHEET_COLUMNS * SHEET_ROWS
    show_kept = [kept[i] for i in sorted(rng.choice(len(kept), min(n, len(kept)), replace=False))] if kept else []
    show_rej = [rejected[i] for i in sorted(rng.choice(len(rejected), min(n, len(rejected)), replace=False))] \
        if rejected else []
    label_h, gap = 12, 24
    sheet_w, sheet_h = SHEET_COLUMNS * CELL, SHEET_ROWS * (CELL + label_h)
    text_h = 16 * (4 + len(report['au_means']) // 6)
    pic = Image.new('RGB', (2 * sheet_w + gap, 20 + sheet_h + text_h), 'white')
    draw = ImageDraw.Draw(pic)
    draw.text((4, 4), f'kept: {len(kept)} faces (a sample)', fill='black')
    draw.text((sheet_w + gap + 4, 4), f'set aside: {len(rejected)} faces (a sample, with the reason)', fill='black')
    for k, f in enumerate(show_kept):
        path = os.path.join(out, 'images', f'{f["name"]}.jpg')
        paste_cell(pic, draw, path, k, 0, '')
    for k, f in enumerate(show_rej):
        path = os.path.join(out, '.prepare', 'rejected', f'{f["name"]}.jpg')
        paste_cell(pic, draw, path, k, sheet_w + gap, SHORT.get(f.get('why'), f['reason'][:12]))
    y = 24 + sheet_h
    for line in describe(report)[:3]:
        draw.text((4, y), line[:2 * sheet_w // 6], fill='black')
        y += 16
    means = list(report['au_means'].items())
    for i in range(0, len(means), 6):
        draw.text((4, y), '   '.join(f'{a} {v:.2f}' for a, v in means[i:i + 6]), fill='black')
        y += 16
    tmp = os.path.join(out, 'prepare_report.png.tmp')
    pic.save(tmp, format='PNG')
    os.replace(tmp, os.path.join(out, 'prepare_report.png'))


def paste_cell(pic, draw, path, k, x0, label):
    x, y = x0 + CELL * (k % SHEET_COLUMNS), 20 + (CELL + 12) * (k // SHEET_COLUMNS)
    if os.path.exists(path):
        with Image.open(path) as im:
            pic.paste(im.convert('RGB').resize((CELL, CELL), Image.BILINEAR), (x, y))
    if label:
        draw.text((x + 1, y + CELL), label[:12], fill='darkred')
