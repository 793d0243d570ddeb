"""Run the OpenFace binaries with the original GANimation code's settings, when they are installed.

Images (the original GANimation code's command):
    FaceLandmarkImg -fdir IMAGES -out_dir DIR -aus -simalign -au_static -nobadaligned -simsize 128
                    -format_aligned jpg -nomask
Videos (one call per file; the dynamic AU models with per-person calibration):
    FeatureExtraction -f VIDEO -out_dir DIR -aus -simalign -nobadaligned -simsize 128 -format_aligned jpg -nomask

OpenFace is a C++ toolkit, not a pip package. The binaries are looked for in --openface_bin,
then $OPENFACE_BIN, then PATH, then ./OpenFace/build/bin and ./build/bin.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from utils.errors import MissingInput, UserError

ALIGN_ARGS = ['-simalign', '-nobadaligned', '-simsize', '128', '-format_aligned', 'jpg', '-nomask']
IMAGE_ARGS = ['-aus', '-simalign', '-au_static', '-nobadaligned', '-simsize', '128', '-format_aligned', 'jpg',
              '-nomask']
VIDEO_ARGS = ['-aus'] + ALIGN_ARGS
INSTALL_HELP = (
    'OpenFace is a C++ toolkit built from source, not a pip package: follow '
    'https://github.com/TadasBaltrusaitis/OpenFace/wiki/Unix-Installation (Linux, macOS) or '
    'https://github.com/TadasBaltrusaitis/OpenFace/wiki/Windows-Installation (Windows, prebuilt binaries there), '
    'including its download_models script for the landmark and AU models; then pass --openface_bin '
    '<OpenFace>/build/bin (or set OPENFACE_BIN, or put that folder on PATH). '
    'Without OpenFace, run the printed command(s) on a machine that has it and convert its output folder here '
    'with --openface_dir.')


class OpenFaceMissing(UserError):
    pass


def _candidates(openface_bin=None):
    dirs = [openface_bin, os.environ.get('OPENFACE_BIN')]
    return [d for d in dirs if d], [os.path.join('OpenFace', 'build', 'bin'), os.path.join('build', 'bin')]


def find_binary(name, openface_bin=None):
    """Path of an OpenFace binary (FaceLandmarkImg, FeatureExtraction), or OpenFaceMissing."""
    first, last = _candidates(openface_bin)
    for d in first:
        for fn in (name, name + '.exe'):
            p = os.path.join(d, fn)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
    found = shutil.which(name)
    if found:
        return found
    for d in last:
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    looked = ', '.join(first + ['PATH'] + last)
    raise OpenFaceMissing(f'{name} not found (looked in {looked}). {INSTALL_HELP}')


def image_command(binary, images_dir, out_dir):
    return [binary, '-fdir', images_dir, '-out_dir', out_dir] + IMAGE_ARGS


def video_command(binary, video, out_dir):
    return [binary, '-f', video, '-out_dir', out_dir] + VIDEO_ARGS


def run_openface(out_dir, images=None, videos=(), openface_bin=None, dry_run=False, log=print):
    """Run FaceLandmarkImg on the images folder and FeatureExtraction on each video, writing into
    out_dir. dry_run: only print the commands. Missing binaries: OpenFaceMissing with the command
    that would have run and how to install OpenFace."""
    jobs = []
    if images:
        if not os.path.isdir(images):
            raise MissingInput(f'--images {images}: no such folder')
        jobs.append(('FaceLandmarkImg', lambda b: image_command(b, images, out_dir)))
    for v in videos or ():
        if not os.path.isfile(v):
            raise MissingInput(f'--videos {v}: no such file')
        jobs.append(('FeatureExtraction', lambda b, v=v: video_command(b, v, out_dir)))
    commands = []
    for name, make in jobs:
        try:
            binary = find_binary(name, openface_bin)
        except OpenFaceMissing as e:
            if dry_run:
                binary = name
            else:
                raise OpenFaceMissing(f'{e}\nThe command would be: {shlex.join(make(name))}') from None
        commands.append(make(binary))
    if commands and not dry_run:
        os.makedirs(out_dir, exist_ok=True)
    for cmd in commands:
        log(('would run: ' if dry_run else 'running: ') + shlex.join(cmd))
        if not dry_run:
            done = subprocess.run(cmd)
            if done.returncode != 0:
                raise UserError(f'{os.path.basename(cmd[0])} failed with exit code {done.returncode}: '
                                   f'{shlex.join(cmd)}')
    return commands
