"""python -m openface_utils --openface_dir DIR --out_dir OUT [--min_confidence 0.88]

Converts OpenFace output (per-image CSVs of FaceLandmarkImg, per-video CSVs of
FeatureExtraction, with their `<name>_aligned/` folders) into a training folder
(OUT/images, OUT/aus.txt, OUT/aus_openface.pkl, train_ids.csv, test_ids.csv) and AU
sequences for test mode (OUT/sequences/<video>.txt). With --images and/or --videos it
first runs OpenFace itself (the original GANimation code's command) into --openface_dir.
"""
import argparse
import os
import sys

if __package__ in (None, ''):   # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser():
    p = argparse.ArgumentParser(prog='python -m openface_utils', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--openface_dir', required=True, help='folder of OpenFace output (searched recursively)')
    p.add_argument('--out_dir', required=True, help='dataset folder to write')
    p.add_argument('--min_confidence', type=float, default=0.88, help='drop detections below this confidence')
    p.add_argument('--test_fraction', type=float, default=0.1, help='share of the images in test_ids.csv')
    p.add_argument('--seed', type=int, default=0, help='seed of the train/test split')
    g = p.add_argument_group('running OpenFace first (needs its binaries)')
    g.add_argument('--images', help='folder of images: run FaceLandmarkImg on it into --openface_dir')
    g.add_argument('--videos', nargs='+', default=[], help='video files: run FeatureExtraction on each')
    g.add_argument('--openface_bin', help='folder holding FaceLandmarkImg and FeatureExtraction '
                                          '(default: $OPENFACE_BIN, then PATH)')
    g.add_argument('--print_commands', action='store_true', help='print the OpenFace commands and stop')
    return p


def main(argv=None):
    from utils.errors import command
    return command(convert_or_run)(argv)


def convert_or_run(argv):
    from openface_utils import convert, run_openface
    a = build_parser().parse_args(argv)
    if a.images or a.videos or a.print_commands:
        run_openface(a.openface_dir, a.images, a.videos, a.openface_bin, dry_run=a.print_commands)
        if a.print_commands:
            return 0
    report = convert(a.openface_dir, a.out_dir, a.min_confidence, a.test_fraction, a.seed)
    return 0 if report['images']['kept'] or report['sequences'] else 1


if __name__ == '__main__':
    sys.exit(main())
