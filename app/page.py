"""The face editor in the browser (Gradio, an optional extra):

    python main.py --mode app                                 # the newest run, else the demo's model
    python main.py --mode app --test_models_dir released/ganimation_celeba.pth

It listens on 127.0.0.1 only (port 7860, or GRADIO_SERVER_PORT), makes no share link, sends no
analytics and the page loads nothing from the internet. GANimation: a held-out face or the faces of
an uploaded photo, 17 AU sliders starting from the face's own AUs, emotion presets, the edit beside
its attention mask, and an animation driven by a video or an AU sequence file. GANmut: the learned
plane to click on, an intensity slider and the emotion wheel. The work is app/editor.py's; this file
only lays out the page and turns bad input into a message in it (docs/app.md).
"""
import functools
import os
import traceback

import numpy as np

import synthetic_faces as sf
from app.editor import MAX_SIDE, MAX_VIDEO_FRAMES, PREVIEW_SIDE, Editor, enlarged, model_to_serve
from editing import video
from model import Trained
from utils.errors import UserError

HOST = '127.0.0.1'
MAX_FILE_SIZE = '50mb'      # uploads above this are refused by the page itself
INSTALL_HINT = 'pip install -r requirements-extras.txt (it installs Gradio)'
PRESETS = ('happy', 'sad', 'surprise', 'fear', 'disgust', 'anger', 'contempt')
SEQUENCE_FILES = ('.txt', '.csv')
SYSTEM_FONTS = ('ui-sans-serif', 'system-ui', 'sans-serif')


def gradio():
    """Gradio with its analytics off; a UserError saying what to install when it is missing."""
    os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    try:
        import gradio as gr
    except ImportError:
        raise UserError(f'--mode app needs Gradio, an optional dependency: {INSTALL_HINT}') from None
    return gr


def message(e):
    """What the page says about an exception: a UserError's own words; anything else in one line
    (the traceback goes to the console, never to the page)."""
    if isinstance(e, UserError):
        return f'**{e}**'
    traceback.print_exc()
    return f'**Something went wrong ({type(e).__name__}: {e}). The page keeps serving; the console has the details.**'


def guarded(n_outputs):
    """A handler whose errors end as a message in its last output (the status line); its other
    outputs are left as they were."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kw):
            try:
                return fn(*args, **kw)
            except Exception as e:      # noqa: BLE001 -- the page must keep serving whatever happened
                gr = gradio()
                return tuple(gr.skip() for _ in range(n_outputs - 1)) + (message(e),)
        return run
    return wrap


def upload_name(path):
    """The name the user's file had (Gradio keeps it as the last part of its upload path)."""
    return os.path.basename(path) if path else ''


def describe(editor):
    t = editor.trained
    what = 'GANimation (17 AU sliders)' if editor.model == 'ganimation' else \
        f'GANmut ({t.config.get("parametrization", "linear")} emotion space)'
    own = ('' if editor.model == 'ganmut' else
           '; the faces\' own AUs are read by ' + ('its critic' if editor.D is not None else 'the AU reader'))
    return (f'### {what}\nModel `{t.path}`, {editor.size} px, iteration {t.iteration}{own}. Photos are scaled '
            f'down to {MAX_SIDE} px on the longer side; uploads over {MAX_FILE_SIZE.upper()} are refused.')


def build(editor):
    """The page (gr.Blocks) around an Editor."""
    gr = gradio()
    with gr.Blocks(title='Face editor', analytics_enabled=False) as page:
        gr.Markdown(describe(editor))
        subject = gr.State()
        with gr.Row():
            face = gr.Dropdown(editor.sample_names, value=editor.sample_names[0], label='a held-out face',
                               elem_id='face')
            photo = gr.File(label='or upload a photo: every face is found, aligned, edited and pasted back',
                            type='filepath', elem_id='photo')
        status = gr.Markdown(elem_id='status')
        with gr.Row():
            shown_in = gr.Image(label='input', interactive=False, format='png', elem_id='input')
            shown_out = gr.Image(label='edited', interactive=False, format='png', elem_id='edited')
            shown_mask = gr.Image(label='attention mask (white: the input kept)', interactive=False, format='png',
                                  elem_id='mask')
        controls = ganimation_controls if editor.model == 'ganimation' else ganmut_controls
        first, inputs, picked = controls(gr, editor, subject, face, photo, status, shown_in, shown_out, shown_mask)
        page.load(first, inputs, picked)        # the first held-out face, edited to its own AUs
    return page


def serve(cfg, given):
    """--mode app: load the model, build the page, print its URL and serve until Ctrl+C."""
    gr = gradio()
    path = model_to_serve(cfg, given)
    editor = Editor(Trained.newest(path), cfg.device, cfg.amp, cfg.test_num_faces,
                    cfg.test_results_dir or os.path.join('outputs', 'app'))
    page = build(editor)
    page.queue(default_concurrency_limit=1)
    _, url, _ = launch(gr, page, editor)
    print(f'the face editor ({editor.model}, {path}): {url}  (Ctrl+C stops it; animations are saved in '
          f'{editor.results_dir}/)', flush=True)
    try:
        page.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()


def launch(gr, page, editor, port=None):
    """Start serving without blocking: on 127.0.0.1 only, no share link, no analytics, fonts of the system."""
    os.makedirs(editor.results_dir, exist_ok=True)
    return page.launch(server_name=HOST, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                       quiet=True, show_error=False, max_file_size=MAX_FILE_SIZE, ssr_mode=False, pwa=False,
                       mcp_server=False, allowed_paths=[os.path.abspath(editor.results_dir)],
                       theme=gr.themes.Default(font=SYSTEM_FONTS, font_mono=('ui-monospace', 'monospace')))


def ganimation_controls(gr, editor, subject, face, photo, status, shown_in, shown_out, shown_mask):
    names = editor.label_names
    with gr.Row():
        own_button = gr.Button('the face\'s own AUs', size='sm', elem_id='preset_own')
        presets = [gr.Button(e, size='sm', elem_id=f'preset_{e}') for e in PRESETS]
    sliders = []
    with gr.Row():
        for col in np.array_split(np.arange(len(names)), 3):
            with gr.Column():
                for i in col:
                    meaning = sf.AU_MEANINGS[sf.AU_INDEX[names[i]]]
                    sliders.append(gr.Slider(0, 5, value=0, step=0.1, label=f'{names[i]} {meaning}',
                                             elem_id=f'slider_{names[i]}'))
    with gr.Accordion('animate the face', open=True):
        with gr.Row():
            driver = gr.File(label=f'a short video (its first {MAX_VIDEO_FRAMES} frames), or an AU sequence '
                                   f'(.txt table, OpenFace .csv)', type='filepath', elem_id='driver')
            animation = gr.Image(label='animation', interactive=False, elem_id='animation')
            downloads = gr.File(label='GIF and MP4', file_count='multiple', interactive=False, elem_id='downloads')
        go = gr.Button('animate', variant='primary', elem_id='animate')
    n = len(names)

    def start(sub):
        """A face picked: its picture, its edit at its own AUs, and the sliders at them."""
        out = editor.edit_aus(sub, sub.own[0])
        return (sub, enlarged(sub.picture), enlarged(out.image), enlarged(out.mask),
                *[round(float(v), 1) for v in sub.own[0]], sub.note)

    @guarded(5 + n)
    def choose_sample(name):
        return start(editor.sample(editor.sample_names.index(name)))

    @guarded(5 + n)
    def choose_photo(path):
        if not path:
            return (gr.skip(),) * (4 + n) + ('',)
        return start(editor.photo(path, upload_name(path)))

    def edit(preview):
        @guarded(3)
        def run(sub, *aus):
            if sub is None:
                raise UserError('pick a face or upload a photo first')
            out = editor.edit_aus(sub, aus, preview)
            what = f'preview at {PREVIEW_SIDE} px' if preview else 'edit'
            return enlarged(out.image), enlarged(out.mask), f'{what}: {out.seconds * 1000:.0f} ms on the server'
        return run

    @guarded(n + 1)
    def own_aus(sub):
        if sub is None:
            raise UserError('pick a face or upload a photo first')
        return (*[round(float(v), 1) for v in sub.own[0]], 'the face\'s own AUs')

    def preset(emotion):
        @guarded(n + 1)
        def run():
            aus = editor.preset(emotion)
            return (*[float(v) for v in aus], f'{emotion}: its prototype AUs at intensity {aus.max():g}')
        return run

    @guarded(3)
    def animate(sub, path, progress=gr.Progress()):
        if sub is None:
            raise UserError('pick a face or upload a photo first')
        if not path:
            raise UserError('upload a video or an AU sequence file first')
        name, notes = upload_name(path), []
        if path.lower().endswith(SEQUENCE_FILES):
            seq, fps, refs = editor.sequence_of_file(path, name), 10, None
        elif video.is_video(path):
            seq, fps, refs = editor.sequence_of_video(path, name, lambda f, what: progress(f, desc=what),
                                                      log=lambda line: notes.append(line.replace(path, name)))
        else:
            raise UserError(f'{name}: neither a video ({", ".join(video.VIDEO_EXTENSIONS)}) nor an AU sequence '
                            f'({", ".join(SEQUENCE_FILES)})')
        gif, mp4 = editor.animate(sub, seq, fps, refs, lambda f, what: progress(f, desc=what))
        files = [gif] + ([mp4] if mp4 else [])
        return gif, files, f'{name}: {len(seq)} frames at {fps:g} fps' + ''.join(f'; {x}' for x in notes)

    picked = [subject, shown_in, shown_out, shown_mask, *sliders, status]
    face.input(choose_sample, face, picked)
    photo.upload(choose_photo, photo, picked).then(lambda: None, None, photo)   # ready for the next photo
    full, quick = edit(False), edit(True)
    for s in sliders:
        s.release(full, [subject, *sliders], [shown_out, shown_mask, status], concurrency_id='edit',
                  trigger_mode='always_last')
        if editor.size > PREVIEW_SIDE:
            s.input(quick, [subject, *sliders], [shown_out, shown_mask, status], concurrency_id='edit',
                    trigger_mode='always_last', show_progress='hidden')
    own_button.click(own_aus, subject, [*sliders, status]).then(full, [subject, *sliders],
                                                                [shown_out, shown_mask, status])
    for button, emotion in zip(presets, PRESETS):
        button.click(preset(emotion), None, [*sliders, status]).then(full, [subject, *sliders],
                                                                     [shown_out, shown_mask, status])
    go.click(animate, [subject, driver], [animation, downloads, status], concurrency_id='render')
    return choose_sample, [face], picked


def ganmut_controls(gr, editor, subject, face, photo, status, shown_in, shown_out, shown_mask):
    point = gr.State(np.zeros(editor.space.dim))
    with gr.Row():
        plane = gr.Image(editor.plane(), label='the learned plane: click a point to edit', interactive=False,
                         format='png', elem_id='plane')
        with gr.Column():
            intensity = gr.Slider(0, 1.5, value=1.0, step=0.05, label='intensity (times the point clicked)',
                                  elem_id='intensity')
            wheel = gr.Button('the emotion wheel', variant='primary', elem_id='wheel')
            animation = gr.Image(label='emotion wheel', interactive=False, elem_id='animation')
            downloads = gr.File(label='GIF and MP4', file_count='multiple', interactive=False, elem_id='downloads')

    def at(sub, p, k):
        out = editor.edit_code(sub, p, k)
        code = ', '.join(f'{v:+.2f}' for v in out.extra['code'])
        return (editor.plane(out.extra['code']), enlarged(out.image), enlarged(out.mask),
                f'code ({code}), nearest emotion {out.extra["nearest"]}: {out.seconds * 1000:.0f} ms on the server')

    def start(sub, p, k):
        """A face picked: its picture, and its edit at the point and intensity already chosen."""
        plane_picture, image, mask, _ = at(sub, p, k)
        return sub, enlarged(sub.picture), image, mask, plane_picture, sub.note

    @guarded(6)
    def choose_sample(name, p, k):
        return start(editor.sample(editor.sample_names.index(name)), p, k)

    @guarded(6)
    def choose_photo(path, p, k):
        if not path:
            return (gr.skip(),) * 5 + ('',)
        return start(editor.photo(path, upload_name(path)), p, k)

    @guarded(5)
    def click(sub, k, evt: gr.SelectData):
        if sub is None:
            raise UserError('pick a face or upload a photo first')
        p = editor.code_at(*evt.index[:2])
        return (p,) + at(sub, p, k)

    @guarded(4)
    def strength(sub, p, k):
        if sub is None:
            raise UserError('pick a face or upload a photo first')
        return at(sub, p, k)

    @guarded(3)
    def spin(sub, progress=gr.Progress()):
        if sub is None:
            raise UserError('pick a face or upload a photo first')
        gif, mp4 = editor.wheel(sub, progress=lambda f, what: progress(f, desc=what))
        return gif, [gif] + ([mp4] if mp4 else []), 'the emotion wheel: once around the plane'

    picked = [subject, shown_in, shown_out, shown_mask, plane, status]
    face.input(choose_sample, [face, point, intensity], picked)
    photo.upload(choose_photo, [photo, point, intensity], picked).then(lambda: None, None, photo)
    plane.select(click, [subject, intensity], [point, plane, shown_out, shown_mask, status], concurrency_id='edit')
    intensity.release(strength, [subject, point, intensity], [plane, shown_out, shown_mask, status],
                      concurrency_id='edit', trigger_mode='always_last')
    wheel.click(spin, subject, [animation, downloads, status], concurrency_id='render')
    return choose_sample, [face, point, intensity], picked
