"""OpenFace outputs -> this project's formats.

    python -m openface_utils --openface_dir processed/ --out_dir data/mydata
    python -m openface_utils --images photos/ --videos clip.mp4 --openface_dir processed/ --out_dir data/mydata

- `openface_csv`: read a FaceLandmarkImg (per image) or FeatureExtraction (per video) CSV,
  columns by name, rows filtered by confidence and success, errors naming file and line;
- `convert`: gather the aligned faces into `OUT/images/` with `OUT/aus.txt`,
  `OUT/aus_openface.pkl`, `train_ids.csv`, `test_ids.csv`, and turn videos into AU
  sequences for test mode (`OUT/sequences/<video>.txt`);
- `run_openface`: run the OpenFace binaries with the original GANimation code's command, when installed.
"""
from .convert import convert
from .openface_csv import AU_NAMES, OpenFaceTable, aligned_image, read_openface_csv, sequence_from_csv
from .run_openface import OpenFaceMissing, find_binary, image_command, run_openface, video_command

__all__ = ['AU_NAMES', 'OpenFaceTable', 'aligned_image', 'read_openface_csv', 'sequence_from_csv', 'convert',
           'OpenFaceMissing', 'find_binary', 'image_command', 'run_openface', 'video_command']
