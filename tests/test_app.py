"""The face editor (`--mode app`, app/editor.py and app/page.py): the model it serves, its edits
without a browser, bad input as messages, and the page itself in headless Chromium (Selenium, and
`chromium` and `chromedriver` wherever PATH finds them; skipped, saying what is missing, without them or
without Gradio)."""
import io
import json
import os
import shutil
import socket
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image
from test_pretrained_real import chroma
from tiny import TINY_MODEL

import main
import synthetic_faces as sf
from app import editor as ed
from editing import landmarks
from ganmut import plots as gv
from model import Trained
from utils.errors import MissingInput, UserError

TINY = TINY_MODEL + ['--log_step', '2', '--synthetic_images', '48', '--num_iters', '2', '--model_save_step', '2',
                     '--sample_step', '100']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """{'ganimation': run folder, 'ganmut': run folder} of two tiny models trained 2 iterations."""
    synth = str(tmp_path_factory.mktemp('synthetic'))
    out = {}
    for model in ('ganimation', 'ganmut'):
        out[model] = tmp_path_factory.mktemp(model)
        extra = ['--num_iters_decay', '2'] if model == 'ganmut' else []
        assert main.main(['--mode', 'train', '--model', model, '--dataset', 'synthetic', '--synthetic_dir', synth,
                          '--outputs_dir', str(out[model])] + TINY + extra) == 0
    return out


def editor_of(run, tmp_path, **kw):
    """An Editor of the run whose generator's mask is opened to 0.5 everywhere: two iterations leave it
    a copy of its input, and the tests need outputs that follow the condition."""
    editor = ed.Editor(Trained.newest(str(run / 'models')), results_dir=str(tmp_path / 'app'), **kw)
    editor.G.attn[0].weight.data.zero_()
    return editor


@pytest.fixture(scope='module')
def ganimation(runs, tmp_path_factory):
    return editor_of(runs['ganimation'], tmp_path_factory.mktemp('ganimation_app'))


@pytest.fixture(scope='module')
def ganmut(runs, tmp_path_factory):
    return editor_of(runs['ganmut'], tmp_path_factory.mktemp('ganmut_app'))


def difference(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


# --------------------------------------------------------------------------- which model, which faces

def test_the_model_served(runs, tmp_path, monkeypatch, capsys):
    parse = main.build_parser().parse_args
    monkeypatch.chdir(tmp_path)
    cfg = parse(['--mode', 'app'])
    assert ed.model_to_serve(cfg, {'mode'}) == ed.PRETRAINED_REAL          # a fresh clone: the real-face model
    assert 'serving the pretrained generator trained on real faces' in capsys.readouterr().out
    monkeypatch.setattr(ed, 'PRETRAINED_REAL', str(tmp_path / 'gone_real.ckpt'))
    assert ed.model_to_serve(cfg, {'mode'}) == ed.PRETRAINED_DEMO          # without it: the synthetic one
    assert 'serving the pretrained demo generator (synthetic faces)' in capsys.readouterr().out
    monkeypatch.setattr(ed, 'PRETRAINED_DEMO', str(tmp_path / 'gone.ckpt'))
    with pytest.raises(MissingInput) as e:
        ed.model_to_serve(cfg, {'mode'})
    assert 'outputs/ganimation/models or outputs/demo/models' in str(e.value)
    assert '`python main.py --mode demo`' in str(e.value) and '--test_models_dir' in str(e.value)
    shutil.copytree(runs['ganimation'] / 'models', tmp_path / 'outputs' / 'demo' / 'models')
    assert ed.model_to_serve(cfg, {'mode'}) == 'outputs/demo/models'              # a fresh clone after the demo
    shutil.copytree(runs['ganimation'] / 'models', tmp_path / 'outputs' / 'ganimation' / 'models')
    assert ed.model_to_serve(cfg, {'mode'}) == 'outputs/ganimation/models'        # a run of its own comes first
    cfg = parse(['--mode', 'app', '--test_models_dir', 'x.pth'])
    assert ed.model_to_serve(cfg, {'mode', 'test_models_dir'}) == 'x.pth'
    cfg = parse(['--mode', 'app', '--outputs_dir', 'elsewhere'])
    with pytest.raises(MissingInput, match='no checkpoint in elsewhere/models. Train'):   # not the demo's instead
        ed.model_to_serve(cfg, {'mode', 'outputs_dir'})


def test_flags_that_do_not_apply_are_refused(capsys):
    assert main.main(['--mode', 'app', '--num_iters', '5']) == 2
    assert '--num_iters does not apply to --mode app; it takes --model, --test_models_dir' in capsys.readouterr().err


def test_held_out_faces_else_rendered_ones(runs, ganimation, tmp_path):
    names = ganimation.sample_names
    assert len(names) == 6 and not names[0].startswith('synthetic')
    sub = ganimation.sample(0)
    assert sub.faces[0].crop.shape == (32, 32, 3) and sub.own.shape == (1, 17)
    assert (sub.own >= 0).all() and (sub.own <= 5).all() and sub.picture is sub.faces[0].crop
    trained = Trained.newest(str(runs['ganimation'] / 'models'))
    trained.config['attr_path'] = str(tmp_path / 'gone.txt')          # the training data is not there
    alone = ed.Editor(trained, results_dir=str(tmp_path / 'app'), num_faces=2)
    assert alone.sample_names == ['synthetic_0', 'synthetic_1']
    assert alone.sample(1).faces[0].crop.shape == (32, 32, 3)
    with pytest.raises(UserError, match='no sample face 2: there are 2'):
        alone.sample(2)


def real_model_samples():
    """The sample faces of a model of real faces whose data is not here: the astronaut's, when scikit-image
    and the face detector are installed; else rendered faces."""
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return ['synthetic_0']
    return ['astronaut'] if landmarks.available() else ['synthetic_0']


def test_a_real_face_model_without_its_data_shows_the_astronaut(tmp_path):
    """The generator trained on real faces, in a fresh clone (its data is not there): its sample face is a
    real one, framed as its training crops, and it edits it."""
    trained = Trained.newest(ed.PRETRAINED_REAL)
    trained.config = dict(trained.config, image_dir=str(tmp_path / 'gone'), attr_path=str(tmp_path / 'gone.txt'))
    editor = ed.Editor(trained, results_dir=str(tmp_path / 'app'))
    assert editor.sample_names == real_model_samples()
    if editor.sample_names != ['astronaut']:
        pytest.skip('scikit-image or the face detector is not installed: the sample faces are rendered')
    sub = editor.sample(0)
    assert sub.faces[0].crop.shape == (64, 64, 3) and chroma(sub.faces[0].crop).mean() > 10     # a colour photo
    happy, own = editor.edit_aus(sub, editor.preset('happy')), editor.edit_aus(sub, sub.own[0])
    assert difference(happy.image, own.image) > 1


def test_released_models_are_served(tmp_path):
    """The other implementations' released generators (their keys; weights drawn here): 128 px, no data
    beside them, so the faces are the astronaut's (or rendered); a GANimation file without its critic reads no AUs but the
    reader's (or starts from 0); a gaussian GANmut file brings its space's means."""
    import torch
    from test_released import ganmut_generator, replicate_generator
    torch.save(replicate_generator(), tmp_path / '30_net_gen.pth')
    editor = ed.Editor(Trained.newest(str(tmp_path / '30_net_gen.pth')), results_dir=str(tmp_path / 'a'),
                       num_faces=1)
    assert editor.model == 'ganimation' and editor.D is None and editor.sample_names == real_model_samples()
    sub = editor.sample(0)
    out = editor.edit_aus(sub, editor.preset('happy'))
    assert out.image.shape == (128, 128, 3) and difference(out.image, editor.edit_aus(sub, sub.own[0]).image) > 0.1
    (tmp_path / 'g').mkdir()
    torch.save(ganmut_generator('gaussian'), tmp_path / 'g' / '1000000-G.ckpt')
    editor = ed.Editor(Trained.newest(str(tmp_path / 'g')), results_dir=str(tmp_path / 'a'), num_faces=1)
    mean = editor.space.means()[1].detach().numpy()
    px, py = gv.plane_pixel(ed.PLANE_SIDE, *mean, lim=ed.PLANE_LIM)
    np.testing.assert_allclose(editor.code_at(px, py), mean, atol=1e-6)
    assert editor.edit_code(editor.sample(0), mean).extra['nearest'] == editor.space.names[1]


def test_a_half_precision_copy_edits_as_the_checkpoint_does(runs, tmp_path):
    """utils.checkpoint.half_precision, which made pretrained/: the generator in fp16, nothing else of
    training, the command line dropped, config entries replaced; its edits within a level or two."""
    import torch

    from utils import checkpoint
    full = checkpoint.list_checkpoints(str(runs['ganimation'] / 'models'))[-1][1]
    small = checkpoint.half_precision(full, str(tmp_path / 'small.ckpt'), {'image_dir': 'data/x'})
    ckpt = checkpoint.load(small)                                       # its checksum verified
    assert sorted(ckpt) == ['G', 'config', 'format', 'iteration', 'label_names']
    assert all(v.dtype == torch.float16 for v in ckpt['G'].values() if v.is_floating_point())
    assert ckpt['config']['image_dir'] == 'data/x' and 'argv' not in ckpt['config']
    assert os.path.getsize(small) < os.path.getsize(full) / 3
    a = ed.Editor(Trained.newest(full), results_dir=str(tmp_path / 'a'), num_faces=1)
    b = ed.Editor(Trained.newest(small), results_dir=str(tmp_path / 'a'), num_faces=1)
    crop = sf.render(sf.sample_identity(900001), np.zeros(sf.NUM_AUS), 32)
    sub = ed.Subject([ed.face_crops.Face('f', crop)], np.zeros((1, 17)))
    for editor in (a, b):
        editor.G.attn[0].weight.data.zero_()
    assert difference(a.edit_aus(sub, a.preset('happy')).image, b.edit_aus(sub, b.preset('happy')).image) < 1


# --------------------------------------------------------------------------- edits

def test_an_edit_follows_the_sliders(ganimation):
    sub = ganimation.sample(0)
    own = ganimation.edit_aus(sub, sub.own[0])
    start = time.perf_counter()
    happy = ganimation.edit_aus(sub, ganimation.preset('happy'))
    took = time.perf_counter() - start
    again = ganimation.edit_aus(sub, ganimation.preset('happy'))
    assert own.image.shape == happy.image.shape == (32, 32, 3) and happy.mask.shape == (32, 32, 3)
    assert difference(own.image, happy.image) > 1 and np.array_equal(happy.image, again.image)
    assert happy.mask.min() >= 126 and happy.mask.max() <= 129          # the mask opened to 0.5 (gray)
    assert 0 < happy.seconds <= took                  # seconds (the page shows them as ms), timed inside the call
    hi = ganimation.edit_aus(sub, np.full(17, 9.0))                     # clipped to 0-5, as the sliders are
    assert np.array_equal(hi.image, ganimation.edit_aus(sub, np.full(17, 5.0)).image)
    with pytest.raises(UserError, match='3 AU values for a model of 17 AUs'):
        ganimation.edit_aus(sub, [1, 2, 3])


def test_presets_are_the_emotions_prototypes(ganimation):
    happy = ganimation.preset('happy')
    assert happy[sf.AU_INDEX['AU12']] == ed.PRESET_INTENSITY and happy[sf.AU_INDEX['AU06']] == ed.PRESET_INTENSITY
    assert happy.sum() == 2 * ed.PRESET_INTENSITY
    assert np.array_equal(ganimation.preset('surprise'), sf.emotion_prototype('surprise', ed.PRESET_INTENSITY))


def test_a_preview_is_the_edit_at_fewer_pixels(runs, tmp_path):
    """A 128 px model's preview runs G at 64 px and is brought back to 128 px: it is G on the face
    shrunk by PIL (box filter: the 2x2 mean, as `area` is) and enlarged by PIL (bilinear), within rounding
    and the border rows, where PIL and torch weigh the edge differently (measured: 0.4 levels on average,
    2 at most). No preview (the full edit), nearest-pixel enlarging or G at 32 px is 5 or more away.
    (The full edit shrunk and enlarged is not the preview: G at 64 px is not G at 128 px shrunk.)"""
    import torch
    trained = Trained.newest(str(runs['ganimation'] / 'models'))
    editor = ed.Editor(trained, device='cpu', amp='off', results_dir=str(tmp_path / 'app'), num_faces=1)
    editor.size, editor.G.attn[0].weight.data = 128, editor.G.attn[0].weight.data * 0
    crop = sf.render(sf.sample_identity(900000), np.zeros(sf.NUM_AUS), 128)
    sub = ed.Subject([ed.face_crops.Face('f', crop)], np.zeros((1, 17)))
    aus = editor.preset('happy')
    full, quick = editor.edit_aus(sub, aus), editor.edit_aus(sub, aus, True)
    assert full.image.shape == quick.image.shape == (128, 128, 3)
    small = np.asarray(Image.fromarray(crop).resize((64, 64), Image.BOX))
    with torch.no_grad():
        y, _, _ = editor.G(torch.from_numpy(small.copy()).permute(2, 0, 1)[None] / 127.5 - 1,
                           torch.from_numpy(aus / 5).float()[None])
    at_64 = ((y[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    expected = np.asarray(Image.fromarray(at_64).resize((128, 128), Image.BILINEAR))
    assert difference(quick.image, expected) < 1 and np.abs(quick.image.astype(int) - expected).max() <= 3
    assert difference(full.image, expected) > 5                          # the full edit is not that


def test_a_photo_with_faces_is_edited_where_the_faces_are(ganimation, tmp_path):
    if not landmarks.available():
        pytest.skip(f'the optional face detector is not installed: {landmarks.INSTALL_HINT}')
    data = pytest.importorskip('skimage.data')
    Image.fromarray(data.astronaut()).save(tmp_path / 'astronaut.png')
    sub = ganimation.photo(str(tmp_path / 'astronaut.png'))
    assert len(sub.faces) == 1 and sub.note.startswith('astronaut.png: 1 face found, aligned and edited')
    assert sub.picture.shape == (512, 512, 3) and not np.array_equal(sub.picture, data.astronaut())  # outlined
    out = ganimation.edit_aus(sub, ganimation.preset('surprise'))
    assert out.image.shape == (512, 512, 3)
    changed = np.abs(out.image.astype(int) - data.astronaut()).max(2) > 0
    ys, xs = np.nonzero(changed)
    box = sub.faces[0].box                                            # x, y, w, h of the detector
    assert changed.sum() > 500 and xs.min() > box[0] - box[2] and xs.max() < box[0] + 2 * box[2]
    assert ys.min() > box[1] - box[3] and ys.max() < box[1] + 2 * box[3]   # nothing far from the face moved


def test_bad_uploads_are_messages(ganimation, tmp_path):
    if not landmarks.available():
        pytest.skip(f'the optional face detector is not installed: {landmarks.INSTALL_HINT}')
    (tmp_path / 'notes.txt').write_text('not an image')
    with pytest.raises(UserError, match=r'^notes.txt: not an image this page can read \(cannot identify') as e:
        ganimation.photo(str(tmp_path / 'notes.txt'))
    assert str(tmp_path) not in str(e.value)                          # the name as uploaded, not the server's path
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / 'noise.png')
    with pytest.raises(UserError, match=r'^noise.png: no face found .* the photo is 320x240'):
        ganimation.photo(str(tmp_path / 'noise.png'))
    data = pytest.importorskip('skimage.data')
    wide = np.zeros((700, 4500, 3), np.uint8)                            # over the limit: scaled down, and said
    wide[94:606, 1000:1512] = data.astronaut()
    Image.fromarray(wide).save(tmp_path / 'wide.png')
    sub = ganimation.photo(str(tmp_path / 'wide.png'), 'panorama.png')
    assert 'scaled down from 4500x700 to 4096x637' in sub.note and sub.note.startswith('panorama.png: 1 face')
    assert sub.photo.pixels.shape == (637, 4096, 3)


# --------------------------------------------------------------------------- animations

def test_an_au_sequence_file_animates_the_face(ganimation, tmp_path):
    import data_loader as dl
    seq = np.stack([ganimation.preset(e) for e in ('happy', 'sad', 'surprise', 'anger')])
    dl.write_au_table(str(tmp_path / 'seq.txt'), [f'f{t}' for t in range(4)], seq, sf.AU_NAMES)
    read = ganimation.sequence_of_file(str(tmp_path / 'seq.txt'))
    np.testing.assert_allclose(read, seq, atol=0.006)
    gif, mp4 = ganimation.animate(ganimation.sample(1), read, 5)
    with Image.open(gif) as g:
        frames = []
        for k in range(g.n_frames):
            g.seek(k)
            frames.append(np.asarray(g.convert('RGB')))
    assert len(frames) == 4 and frames[0].shape == (256, 256, 3)        # 32 px enlarged 8 times to be seen
    assert difference(frames[0], frames[2]) > 1
    assert os.path.dirname(gif) == ganimation.results_dir
    (tmp_path / 'bad.txt').write_text('name AU01 AU02\nf0 1 x\n')
    with pytest.raises(UserError, match=r'^bad.txt'):
        ganimation.sequence_of_file(str(tmp_path / 'bad.txt'))


def test_a_driving_video_animates_the_face(ganimation, reader, wheel_video, tmp_path, monkeypatch):
    from test_au_reader import short_clip
    clip = short_clip(wheel_video, tmp_path, count=3, blank=3)
    monkeypatch.setattr(ed, 'MAX_VIDEO_FRAMES', 5)
    notes, fractions = [], []
    seq, fps, refs = ganimation.sequence_of_video(clip, 'mine.mp4', lambda f, what: fractions.append(f), notes.append)
    assert seq.shape == (5, 17) and fps == 30 and refs.shape == (5, ed.REFERENCE_SIDE, ed.REFERENCE_SIDE, 3)
    assert any('its first 5 frames are read' in n for n in notes), notes
    assert any('no face in 2 of 5 frames (frames 3-4)' in n for n in notes), notes
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 1 and len(fractions) == 5
    gif, mp4 = ganimation.animate(ganimation.sample(0), seq, fps, refs)
    with Image.open(gif) as g:
        assert g.size == (512, 256)                                    # the video's face | the edited face
    from editing import video
    video.write([np.zeros((120, 160, 3), np.uint8)] * 3, str(tmp_path / 'dark.mp4'), 30)
    with pytest.raises(UserError, match=r'^dark_clip.mp4: no face in any of its 3 frames'):
        ganimation.sequence_of_video(str(tmp_path / 'dark.mp4'), 'dark_clip.mp4')


# --------------------------------------------------------------------------- GANmut

def test_the_plane_clicked_is_the_code_edited(ganmut):
    for x, y in ((0.5, -0.25), (-1, 1), (0, 0)):
        px, py = gv.plane_pixel(ed.PLANE_SIDE, x, y, lim=ed.PLANE_LIM)
        np.testing.assert_allclose(ganmut.code_at(px, py), [x, y], atol=1e-9)
    plane = ganmut.plane()
    assert plane.shape == (ed.PLANE_SIDE, ed.PLANE_SIDE, 3)
    marked = ganmut.plane(np.array([0.5, 0.5]))
    px, py = (round(v) for v in gv.plane_pixel(ed.PLANE_SIDE, 0.5, 0.5, lim=ed.PLANE_LIM))
    assert np.array_equal(marked[py, px], [0, 0, 0]) and difference(plane, marked) > 0
    sub = ganmut.sample(0)
    axis = ganmut.space.axes()[1].detach().cpu().numpy()              # the second emotion's axis
    out = ganmut.edit_code(sub, axis, 1.0)
    assert out.extra['nearest'] == ganmut.space.names[1]
    np.testing.assert_allclose(out.extra['code'], axis, atol=1e-6)
    none = ganmut.edit_code(sub, axis, 0.0)
    assert np.array_equal(none.image, ganmut.edit_code(sub, [0.3, -0.9], 0.0).image)   # intensity 0: the origin
    assert difference(out.image, none.image) > 1
    gif, _ = ganmut.wheel(sub, frames=6)
    with Image.open(gif) as g:
        assert g.n_frames == 6


# --------------------------------------------------------------------------- the page in a browser

def gradio_or_skip():
    return pytest.importorskip('gradio', reason='Gradio is an optional extra: pip install -r requirements-extras.txt')


def test_handlers_turn_errors_into_messages(capsys):
    gradio_or_skip()
    from app import page

    @page.guarded(3)
    def bad_input():
        raise UserError('photo.txt: not an image')

    @page.guarded(2)
    def broken():
        return {}['missing']
    skipped, _, said = bad_input()
    assert said == '**photo.txt: not an image**' and skipped == {'__type__': 'update'}   # left as it was
    _, said = broken()
    assert said.startswith("**Something went wrong (KeyError: 'missing'). The page keeps serving")
    assert 'Traceback' not in said and 'Traceback' in capsys.readouterr().err


def test_without_gradio_it_says_what_to_install(monkeypatch, runs, capsys):
    import sys
    monkeypatch.setitem(sys.modules, 'gradio', None)                  # import gradio fails
    assert main.main(['--mode', 'app', '--test_models_dir', str(runs['ganimation'] / 'models')]) == 2
    assert capsys.readouterr().err.strip() == ('error: --mode app needs Gradio, an optional dependency: '
                                               'pip install -r requirements-extras.txt (it installs Gradio)')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def browser():
    gradio_or_skip()
    webdriver = pytest.importorskip('selenium.webdriver', reason='Selenium is an optional extra')
    chromium, chromedriver = shutil.which('chromium'), shutil.which('chromedriver')     # wherever PATH has them
    missing = [name for name, path in (('chromium', chromium), ('chromedriver', chromedriver)) if not path]
    if missing:
        pytest.skip(f'headless Chromium is not installed ({" and ".join(missing)} not on PATH): '
                    'apt-get install chromium chromium-driver')
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                '--window-size=1400,1800'):
        options.add_argument(arg)
    options.set_capability('goog:loggingPrefs', {'performance': 'ALL'})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def served(browser):
    """serve(editor) -> the page's URL, open in the browser; the server stops after the test."""
    from app import page
    pages = []

    def serve(editor):
        gr = page.gradio()
        built = page.build(editor)
        built.queue(default_concurrency_limit=1)
        _, url, _ = page.launch(gr, built, editor, port=free_port())
        pages.append(built)
        browser.get(url)
        wait_for(lambda: image_of(browser, 'edited'), 'the first face edited')
        return url
    yield serve
    for built in pages:
        built.close()


def wait_for(condition, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        got = condition()
        if got is not None and got is not False:
            return got
        time.sleep(0.2)
    raise AssertionError(f'timed out waiting for {what}')


def image_of(driver, elem_id):
    """The pixels the page shows in the image component `elem_id`, or None."""
    found = driver.find_elements('css selector', f'#{elem_id} img')
    src = found[0].get_attribute('src') if found else None
    if not src:
        return None
    with urllib.request.urlopen(src) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert('RGB'))


def status_of(driver):
    return driver.find_element('css selector', '#status').text


def changes(driver, elem_id, action, what):
    """Do `action`, then wait until the image `elem_id` shows other pixels; returns them."""
    before = image_of(driver, elem_id)
    action()

    def other():
        now = image_of(driver, elem_id)
        moved = now is not None and (before is None or now.shape != before.shape
                                     or np.abs(now.astype(int) - before).max() > 10)
        return now if moved else None
    return wait_for(other, what)


def drag_slider(driver, name, fraction):
    from selenium.webdriver.common.action_chains import ActionChains
    track = driver.find_element('css selector', f'#slider_{name} input[type=range]')
    width = track.size['width']
    ActionChains(driver).move_to_element_with_offset(track, int((fraction - 0.5) * width), 0).click().perform()


def upload(driver, elem_id, path):
    driver.find_element('css selector', f'#{elem_id} input[type=file]').send_keys(str(path))


def screenshot(driver, name):
    """Screenshots for a person to look at: written when APP_SCREENSHOTS names a folder."""
    folder = os.environ.get('APP_SCREENSHOTS')
    if folder:
        os.makedirs(folder, exist_ok=True)
        driver.save_screenshot(os.path.join(folder, f'{name}.png'))


def outside_requests(driver):
    """The URLs the page asked for that are not on this machine."""
    urls = set()
    for entry in driver.get_log('performance'):
        msg = json.loads(entry['message'])['message']
        if msg['method'] == 'Network.requestWillBeSent':
            urls.add(msg['params']['request']['url'])
    return sorted(u for u in urls if not u.startswith(('http://127.0.0.1', 'data:', 'blob:')))


def test_the_ganimation_page_in_a_browser(browser, served, ganimation, tmp_path, monkeypatch):
    served(ganimation)
    first = image_of(browser, 'edited')
    assert first.shape == (256, 256, 3) and image_of(browser, 'mask') is not None
    assert 'a held-out face' in status_of(browser)
    screenshot(browser, 'ganimation_start')
    changes(browser, 'edited', lambda: drag_slider(browser, 'AU12', 0.95), 'the edit after moving AU12')
    assert 'edit:' in status_of(browser) and 'ms on the server' in status_of(browser)
    value = browser.find_element('css selector', '#slider_AU12 input[type=number]').get_attribute('value')
    assert float(value) > 4
    changes(browser, 'edited', lambda: browser.find_element('css selector', '#preset_surprise').click(),
            'the surprise preset')
    screenshot(browser, 'ganimation_slider')
    (tmp_path / 'notes.txt').write_text('not an image')
    upload(browser, 'photo', tmp_path / 'notes.txt')
    wait_for(lambda: 'not an image this page can read' in status_of(browser) or None, 'the message about notes.txt')
    assert 'Traceback' not in browser.page_source
    screenshot(browser, 'ganimation_not_an_image')
    changes(browser, 'edited', lambda: drag_slider(browser, 'AU04', 0.9), 'an edit after the bad upload')
    import data_loader as dl
    seq = np.stack([ganimation.preset(e) for e in ('happy', 'sad', 'surprise')])
    dl.write_au_table(str(tmp_path / 'seq.txt'), ['a', 'b', 'c'], seq, sf.AU_NAMES)
    upload(browser, 'driver', tmp_path / 'seq.txt')
    browser.find_element('css selector', '#animate').click()
    wait_for(lambda: len(browser.find_elements('css selector', '#downloads a')) >= 1 or None, 'the animation')
    links = [a.get_attribute('href') for a in browser.find_elements('css selector', '#downloads a')]
    assert any(h.endswith('.gif') for h in links) and 'seq.txt: 3 frames at 10 fps' in status_of(browser)
    with urllib.request.urlopen(browser.find_element('css selector', '#animation img').get_attribute('src')) as r:
        with Image.open(io.BytesIO(r.read())) as gif:
            assert gif.format == 'GIF' and gif.n_frames == 3          # shown as it is: animated
    screenshot(browser, 'ganimation_animation')
    slow, real = [], ganimation.animate

    def slow_animation(*args, **kw):              # a long video's rendering, in the server's thread
        slow.append('started')
        time.sleep(6)
        return real(*args, **kw)
    monkeypatch.setattr(ganimation, 'animate', slow_animation)
    browser.find_element('css selector', '#animate').click()
    wait_for(lambda: slow or None, 'the slow animation to start')
    started = time.time()
    changes(browser, 'edited', lambda: drag_slider(browser, 'AU45', 0.9), 'an edit while a video renders')
    assert time.time() - started < 5                                   # it did not wait for the rendering
    if landmarks.available() and shutil.which('chromium'):
        data = pytest.importorskip('skimage.data')
        Image.fromarray(data.astronaut()).save(tmp_path / 'astronaut.png')
        shown = changes(browser, 'edited', lambda: upload(browser, 'photo', tmp_path / 'astronaut.png'),
                        'the photo edited')
        assert shown.shape == (512, 512, 3) and '1 face found' in status_of(browser)
        changes(browser, 'edited', lambda: browser.find_element('css selector', '#preset_happy').click(),
                'the photo edited happy')
        screenshot(browser, 'ganimation_photo')
    assert outside_requests(browser) == []


def test_the_ganmut_page_in_a_browser(browser, served, ganmut):
    from selenium.webdriver.common.action_chains import ActionChains
    served(ganmut)
    plane = browser.find_element('css selector', '#plane img')
    assert image_of(browser, 'plane').shape == (ed.PLANE_SIDE, ed.PLANE_SIDE, 3)
    axis = ganmut.space.axes()[1].detach().cpu().numpy()
    px, py = gv.plane_pixel(ed.PLANE_SIDE, *axis[:2], lim=ed.PLANE_LIM)
    scale = plane.size['width'] / ed.PLANE_SIDE          # the picture as laid out in the page

    def click():
        ActionChains(browser).move_to_element_with_offset(
            plane, int((px - ed.PLANE_SIDE / 2) * scale), int((py - ed.PLANE_SIDE / 2) * scale)).click().perform()
    changes(browser, 'edited', click, 'the face after a click on the plane')
    wait_for(lambda: f'nearest emotion {ganmut.space.names[1]}' in status_of(browser) or None,
             'the clicked emotion named')
    screenshot(browser, 'ganmut_click')
    assert outside_requests(browser) == []
