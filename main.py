"""Entry point: every option with its default (edit them here), and the dispatch.
    python main.py --mode demo      # train (--train_minutes), animate and score a small GANimation: ~10 min
    python main.py --mode train     # GANimation on data/celeba, else the synthetic faces (--model ganmut)
    python main.py --mode test      # animate or edit faces with the newest checkpoint (--mode app: in a browser)
"""
import argparse
import contextlib
import functools
import os
import re
import sys
import time

from utils.errors import FlagError

# Five defaults differ from the original GANimation code's (`--lambda_smooth 1e-4 --n_critic 5 --g_lr 1e-4
# --d_lr 1e-4 --lambda_cls_end -1`), each measured against the true renderings (docs/training.md):
# - lambda_smooth 1.0 (mean-based TV) is about the original's sum-based 1e-5 at batch 25, 128 px; with its 1e-4
#   on the mean the mask breaks into dots and saturates at 1 (at 64 px and at 128 px).
# - The generator's AU weight ramps from 160 to 20 (--lambda_cls_end): the strong AU push gets the edits going,
#   the weaker one later leaves room for realism (-0.13 after 3,000 iterations; -0.58 after 2,500 with 160 throughout).
# - A generator step every iteration (n_critic 1) at lr 2e-4 was ahead of n_critic 2 at every point of a
#   3,000-iteration run (-0.09 against -0.16 at the end). With all five, the 128 px paper architecture (batch 25)
#   reached edit_error_reduction -0.48 after 850 iterations against -1.06 with the original values, and +0.37
#   after 8,500.
class Range:
    """The valid values of a numeric flag: finite, lo <= v <= hi (an end excluded with lo_open / hi_open),
    a power of two if `power_of_two`, or one of `also` (a sentinel such as -1 for "off")."""

    def __init__(self, lo=None, hi=None, lo_open=False, hi_open=False, power_of_two=False, also=()):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.power_of_two, self.also = power_of_two, tuple(also)

    def holds(self, v):
        if v in self.also:
            return True
        if v != v or v in (float('inf'), float('-inf')):
            return False
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below and (not self.power_of_two or (v > 0 and int(v) & (int(v) - 1) == 0))

    def describe(self, kind):
        """E.g. 'an integer >= 1', 'a number in [0, 1)', '-1 or a number >= 0', 'a power of two >= 32'."""
        noun = 'a power of two' if self.power_of_two else ('an integer' if kind is int else 'a finite number')
        lo, hi = (f'{v:g}' if isinstance(v, float) else str(v) for v in (self.lo, self.hi))
        if self.lo is not None and self.hi is not None:
            where = f'in {"(" if self.lo_open else "["}{lo}, {hi}{")" if self.hi_open else "]"}'
        elif self.lo is not None:
            where = f'{">" if self.lo_open else ">="} {lo}'
        elif self.hi is not None:
            where = f'{"<" if self.hi_open else "<="} {hi}'
        else:
            where = ''
        also = ''.join(f'{a} or ' for a in self.also)
        return f'{also}{noun} {where}'.strip()


class Pattern:
    """The valid values of a text flag with a format: a full match of `regex`."""

    def __init__(self, regex, words):
        self.regex, self.words = re.compile(regex), words

    def holds(self, text):
        return self.regex.fullmatch(text) is not None

    def describe(self, kind):
        return self.words


# The ranges of the numeric flags (each numeric flag names one: build_parser refuses a flag without).
COUNT = Range(1)                   # sizes, steps and counts where 0 makes no sense
OFF_OR_COUNT = Range(0)            # 0 means off or none
WEIGHT = Range(0)                  # loss weights: finite, non-negative
RATE = Range(0, lo_open=True)      # learning rates, frame rates
FRACTION = Range(0, 1)             # shares and probabilities
DECAY = Range(0, 1, hi_open=True)  # Adam betas, moving-average decay
DEVICE = Pattern(r'auto|cpu|cuda(:\d+)?', 'auto, cpu, cuda or cuda:N')
RESUME_POINT = Pattern(r'(?i:|none|auto|latest)|\d+', 'an iteration N, latest, auto or none')

# Every option: (flag, default, one-line help[, valid range]). The type is the default's; a default of None takes
# its type from KINDS, False makes a switch; a numeric option's range is checked when the command line is parsed.
# Groups in the order --help shows them: what a run is first, then the extras. Defaults that differ from the
# original GANimation code's, and why, are in docs/training.md.
FLAG_GROUPS = [
    ('mode and model', [
        ('--mode', 'train', 'train; test: animate or edit faces; eval: score against the truth; demo; bench; app; '
                            'prepare: a dataset from photos'),
        ('--model', 'ganimation', 'ganimation (AU edits) or ganmut (a learned emotion space)'),
    ]),
    ('data', [
        ('--dataset', 'auto', 'auto (data/celeba if present, else synthetic), synthetic, or a dataset folder'),
        ('--image_dir', '', 'images folder (with --attr_path; instead of --dataset)'),
        ('--attr_path', '', 'labels: AU table .txt, AU dict .pkl, or emotion .csv (GANmut)'),
        ('--aus', '', 'train on these AUs only, e.g. AU01,AU12,AU25'),
        ('--synthetic_dir', 'data/synthetic', 'where the built-in synthetic faces are written'),
        ('--synthetic_images', 4000, 'how many synthetic faces to generate', Range(2)),
        ('--on_bad_data', 'error', 'a bad image or label row: error (naming file and line) or skip'),
        ('--source', [], '--mode prepare: folders of photos (recursive), photos or videos -> --dataset'),
        ('--prepare_fps', 5.0, '--mode prepare: frames per second sampled from videos', RATE),
        ('--test_fraction', 0.1, '--mode prepare: share of the crops held out, whole identities', DECAY),
        ('--identity_regex', r'(.+?)_\d+', '--mode prepare: who a file name shows (group 1; default: LFW names)'),
        ('--source_labels', '', '--mode prepare: CSV of image file and emotion -> GANmut\'s training.csv'),
        ('--openface_dir', '', '--mode prepare: the AUs from OpenFace\'s CSVs of the photos, not the AU reader'),
    ]),
    ('model size', [
        ('--c_dim', 17, 'AUs (GANimation) or emotion classes (GANmut); the labels decide for GANimation', COUNT),
        ('--image_size', 128, 'image side in pixels: a power of two, >= 32', Range(32, power_of_two=True)),
        ('--g_conv_dim', 64, 'channels of the first generator conv', COUNT),
        ('--d_conv_dim', 64, 'channels of the first critic conv', COUNT),
        ('--g_repeat_num', 6, 'residual blocks in the generator', OFF_OR_COUNT),
        ('--d_repeat_num', 6, 'stride-2 convs in the critic (image_size >= 2 ** d_repeat_num)', COUNT),
    ]),
    ('optimisation', [
        ('--batch_size', 16, 'images per batch and process', COUNT),
        ('--num_iters', 200000, 'critic iterations', COUNT),
        ('--num_iters_decay', 100000, 'learning rates decay linearly to 0 over these last iterations', OFF_OR_COUNT),
        ('--train_minutes', 0.0, 'train for about this long: --num_iters from the speed measured at the start '
         '(0: off)', WEIGHT),
        ('--n_critic', 1, 'critic updates per generator update', COUNT),
        ('--g_lr', 2e-4, 'generator learning rate', RATE),
        ('--d_lr', 2e-4, 'critic learning rate', RATE),
        ('--beta1', 0.5, 'Adam beta1', DECAY),
        ('--beta2', 0.999, 'Adam beta2', DECAY),
    ]),
    ('loss weights', [
        ('--lambda_cls', 160.0, 'condition weight: AU regression (mean over batch and AUs) or emotion CE', WEIGHT),
        ('--lambda_cls_end', 20.0, 'GANimation: the generator\'s AU weight at the end, ramped linearly (-1: constant)',
         Range(0, also=[-1])),
        ('--lambda_rec', 10.0, 'cycle-consistency weight', WEIGHT),
        ('--lambda_gp', 10.0, 'GANimation: gradient-penalty weight (--adv_loss wgan-gp)', WEIGHT),
        ('--lambda_sat', 0.1, 'attention saturation weight: mean(A)', WEIGHT),
        ('--lambda_smooth', 1.0, 'attention smoothness weight: mean-based total variation of A', WEIGHT),
    ]),
    ('run folder', [
        ('--outputs_dir', 'outputs/ganimation', 'the run folder: config.json, logs/, models/, samples/, results/'),
        ('--resume_iters', '', 'resume from iteration N, latest, or auto (latest if there is one, else start)',
         RESUME_POINT),
        ('--keep_checkpoints', 3, 'keep the newest N checkpoints', COUNT),
    ]),
    ('cadence', [
        ('--log_step', 10, 'log the losses every N iterations', COUNT),
        ('--sample_step', 1000, 'save a sample grid every N iterations', COUNT),
        ('--model_save_step', 5000, 'save a checkpoint every N iterations', COUNT),
        ('--eval_step', 0, 'score --eval_step_pairs pairs every N iterations (0: never)', OFF_OR_COUNT),
        ('--eval_step_pairs', 96, 'pairs scored during training', COUNT),
        ('--eval_pairs', 512, 'pairs scored by --mode eval', COUNT),
    ]),
    ('device and seed', [
        ('--device', 'auto', 'auto, cpu, cuda or cuda:N', DEVICE),
        ('--seed', 0, 'seed of the weights, batch order, flips and targets', Range(0, 2 ** 32 - 1)),
    ]),
    ('test mode and editing', [
        ('--test_images_dir', '', 'aligned face crops (a folder or one file), or photos (--detect_faces, --face_box)'),
        ('--test_attributes_path', '', 'GANimation: the AU sequence, an AU table .txt or an OpenFace .csv'),
        ('--test_reference_dir', '', 'GANimation: the sequence\'s reference frames (default: beside it)'),
        ('--target_aus', '', 'GANimation: one edit on top of each face\'s AUs, e.g. AU12=4,AU25=2'),
        ('--source_aus', 'auto', 'GANimation: the faces\' own AUs: critic, reader (MediaPipe), auto (critic, else reader)'),
        ('--driving_video', '', 'GANimation: a video whose face\'s AUs (the reader) animate the test faces'),
        ('--test_models_dir', '', 'checkpoints (default: <outputs_dir>/models; the newest), or a released model file'),
        ('--test_results_dir', '', 'results folder (default: <outputs_dir>/results)'),
        ('--test_num_faces', 6, 'held-out faces to edit when no --test_images_dir is given', COUNT),
        ('--test_batch_size', 64, 'frames per generator batch', COUNT),
        ('--grid_columns', 12, 'frames per row of the result grid', COUNT),
        ('--fps', 10, 'frames per second of the GIFs', COUNT),
        ('--interpolate', 0, 'GANimation: frames added between consecutive rows of the AU sequence', OFF_OR_COUNT),
        ('--smooth', 0.0, 'GANimation: gaussian smoothing of the AU curves, std in frames (0: off)', WEIGHT),
        ('--mp4', 'auto', 'also write MP4s: auto (with imageio-ffmpeg), true, false'),
        ('--detect_faces', 'false', 'true: photos; find each face and its landmarks, align, edit, paste back'),
        ('--face_framing', 'auto', 'how the training crops frame a face: auto (test: the checkpoint\'s), '
                                   'synthetic, openface, box, a folder of crops or a --calibrate file'),
        ('--face_box', '', 'face boxes by hand, x,y,w,h in pixels (several: x,y,w,h;x,y,w,h)'),
        ('--face_margin', 0.15, '--face_box crop: box * (1 + 2 margin)', Range(0, 2)),
    ]),
    ('training extras', [
        ('--adv_loss', 'wgan-gp', 'GANimation: wgan-gp, or ns-r1 (non-saturating loss, R1 on real images)'),
        ('--lambda_r1', 1.0, 'GANimation: R1 weight (--adv_loss ns-r1)', WEIGHT),
        ('--virtual', False, 'GANimation: virtual cycle-consistency (Kaneko et al.)'),
        ('--virtual_weight', 0.5, 'GANimation: share of the virtual cycle in the cycle term', FRACTION),
        ('--repeat_threshold', 0.0, 'repeat-factor sampling: images of rare labels (share f < t) drawn sqrt(t / f) '
                                    'times as often (0: off)', FRACTION),
        ('--target_noise', 0.1, 'GANimation: uniform noise on the drawn target AUs ([0, 1] units)', FRACTION),
        ('--g_ema_beta', 0.0, 'GANimation: keep a moving average of G with this decay per step (0: off)', DECAY),
        ('--lambda_color_keep', 0.0, 'GANimation: L1 of the colour head to the input where the mask keeps it', WEIGHT),
        ('--d_augment', 'none', 'GANimation: none, or translation (DiffAugment) of what the realism head reads'),
        ('--d_local_head', 0, 'a second realism head on the critic\'s layer N (0: off)', OFF_OR_COUNT),
        ('--g_upsample', 'transposed', 'generator decoder: transposed convs, or resize (nearest + conv)'),
        ('--g_warp', 0, 'a flow head moving the input\'s pixels, one vector per k x k pixels (0: off)', OFF_OR_COUNT),
        ('--g_condition', 'target', 'GANimation: target AUs, or relative ([target, target - source])'),
        ('--nonfinite_patience', 5, 'skip non-finite steps; stop after this many iterations in a row', COUNT),
        ('--init_from', '', 'start from these weights: a released generator file (and its critic) or a checkpoint'),
    ]),
    ('speed switches (auto: on where measured faster on this kind of machine; docs/benchmarks.md)', [
        ('--amp', 'auto', 'bf16 autocast: auto (CUDA, CPUs with AMX or AVX-512 BF16), bf16, off'),
        ('--channels_last', 'auto', 'NHWC memory format: auto, true, false'),
        ('--compile', 'auto', 'torch.compile G: auto (CUDA; CPU runs of 2,000+ iterations with a C++ compiler)'),
        ('--small_conv_matmul', 'auto', 'the critic\'s tiny-output convs as one matmul: auto, true, false'),
        ('--explicit_gp', 'auto', 'gradient penalty written out, no double backward: auto, true, false'),
        ('--fused_adam', 'auto', 'Adam in one kernel: auto, true, foreach (multi-tensor), false (a loop)'),
        ('--data_cache', 'true', 'decode images once into a uint8 cache beside the data'),
        ('--num_workers', 2, 'data loader workers (--data_cache false)', OFF_OR_COUNT),
        ('--deterministic', False, 'deterministic kernels: a resumed run matches bit for bit'),
        ('--bench_compare', False, '--mode bench: also time the plain path (fp32, eager, NCHW)'),
        ('--bench_iters', 30, '--mode bench: timed training iterations', COUNT),
        ('--bench_warmup', 5, '--mode bench: untimed iterations first (at least two --n_critic cycles)', OFF_OR_COUNT),
        ('--bench_infer_repeats', 10, '--mode bench: timed inference batches', COUNT),
        ('--bench_switches', False, '--mode bench: also time the optimised path with each switch off alone'),
    ]),
    ('GANmut (--model ganmut; shared flags take GANMUT_DEFAULTS unless given)', [
        ('--parametrization', 'linear', 'emotion space: linear (an axis per emotion) or gaussian'),
        ('--emotion_dim', 2, 'dimensions of the emotion code (2 or 3)', Range(2, 3)),
        ('--attention', 'true', 'attention generator (true) or the plain one (false)'),
        ('--regularization_type', 'gp', 'critic regulariser: gp (interpolates) or R1 (real images)'),
        ('--cycle_loss', 'approximate', 'cycle code: approximate or original (gaussian: original unless given)'),
        ('--lambda_reg', 10.0, 'critic regulariser weight', WEIGHT),
        ('--lambda_g_strength', 1.0, 'linear: weight of MSE(max softmax of the fake, strength)', WEIGHT),
        ('--lambda_g_info', 1.0, 'linear: generator code-regression weight', WEIGHT),
        ('--lambda_d_info', 1.0, 'linear: critic code-regression weight', WEIGHT),
        ('--lambda_expr', 1.0, 'gaussian: critic code-regression weight', WEIGHT),
        ('--lambda_prediction', 0.5, 'gaussian: weight of the CE of the mean-coded fakes', WEIGHT),
        ('--n_r', 5, 'linear: codes per batch replaced by random directions', OFF_OR_COUNT),
        ('--info_moves_space', 'false', 'linear: the generator\'s info term also moves the axes'),
        ('--theta', None, 'edit: angle of the code in degrees, z = rho (cos theta, sin theta)', Range()),
        ('--rho', None, 'edit: radius of the code (default 1, a linear axis\'s full strength)', Range(0, 1.5)),
        ('--x', None, 'edit: first coordinate of the code, in [-1, 1]', Range(-1, 1)),
        ('--y', None, 'edit: second coordinate of the code', Range(-1, 1)),
        ('--z', None, 'edit: third coordinate of a 3-D code (default 0)', Range(-1, 1)),
        ('--emotion', None, 'edit: an emotion by name (neutral, happy, sad, ...)'),
        ('--intensity', None, 'edit: intensity of --emotion, 0 (neutral) to 1 (default)', FRACTION),
        ('--emotion_wheel', False, 'test mode: a GIF per face once around the plane'),
        ('--wheel_frames', 48, 'frames of --emotion_wheel', Range(2)),
    ]),
    ('the original GANmut code\'s names', [
        ('--dataset_root', '', 'GANmut: images in <dataset_root>/<imgs_folder>, labels training.csv'),
        ('--imgs_folder', 'imgs', 'GANmut: the images folder in --dataset_root'),
        ('--sample_dir', '', 'samples folder (default <outputs_dir>/samples)'),
        ('--log_dir', '', 'TensorBoard folder (default <outputs_dir>/logs)'),
        ('--model_save_dir', '', 'checkpoint folder (default <outputs_dir>/models; test and eval read it)'),
        ('--result_dir', '', 'results folder (default <outputs_dir>/results)'),
        ('--resume_iter', '', 'the same as --resume_iters', RESUME_POINT),
    ]),
]
KINDS = {'--theta': float, '--rho': float, '--x': float, '--y': float, '--z': float, '--emotion': str,
         '--intensity': float}
CHOICES = {'--mode': ['train', 'test', 'eval', 'demo', 'bench', 'app', 'prepare'], '--model': ['ganimation', 'ganmut'],
           '--amp': ['auto', 'bf16', 'off'],
           '--channels_last': ['auto', 'true', 'false'], '--compile': ['auto', 'true', 'false'],
           '--small_conv_matmul': ['auto', 'true', 'false'], '--explicit_gp': ['auto', 'true', 'false'],
           '--fused_adam': ['auto', 'true', 'foreach', 'false'], '--data_cache': ['true', 'false'],
           '--parametrization': ['linear', 'gaussian'], '--attention': ['true', 'false'],
           '--regularization_type': ['gp', 'R1', 'r1'], '--cycle_loss': ['approximate', 'original'],
           '--info_moves_space': ['true', 'false'], '--detect_faces': ['true', 'false'],
           '--mp4': ['auto', 'true', 'false'], '--on_bad_data': ['error', 'skip'], '--adv_loss': ['wgan-gp', 'ns-r1'],
           '--d_augment': ['none', 'translation'], '--g_upsample': ['transposed', 'resize'],
           '--g_condition': ['target', 'relative'], '--source_aus': ['auto', 'critic', 'reader']}
# GANmut's own options and the original GANmut code's names: the last two groups
GANMUT_FLAGS = [f for title, flags in FLAG_GROUPS if title.startswith(('GANmut', "the original GANmut")) for f in flags]

# The demo: a CPU-sized model trained, animated (test mode) and scored (eval mode), within ten minutes of a fresh
# clone on a 2-core CPU of any kind: training takes --train_minutes, its iterations set from the speed measured at
# the start. At 32 px, batch 8: in the same minutes on a 2-core fp32 CPU the 64 px model (batch 16) had not begun
# to edit, and batch 8 was ahead of batch 16 (docs/notebook.md). Two settings edit closer to the truth than the
# main defaults: a tenth of the original gradient penalty and a local realism head on the critic's first layer.
# The 64 px demo of earlier releases (about 40 minutes on such a CPU, 11 with AMX): --image_size 64
# --d_repeat_num 5 --batch_size 16 --num_iters 2500 --num_iters_decay 500.
DEMO = dict(image_size=32, g_conv_dim=32, d_conv_dim=32, g_repeat_num=3, d_repeat_num=4, batch_size=8,
            train_minutes=5.0, num_iters=2500, num_iters_decay=1000, lambda_gp=1.0, d_local_head=1,
            sample_step=250, model_save_step=500, log_step=10, eval_step=500, synthetic_images=2000,
            outputs_dir='outputs/demo')

GANMUT_DEFAULTS = dict(c_dim=7, lambda_cls=1.0, lambda_rec=10.0, n_critic=5, batch_size=16, g_lr=1e-4, d_lr=1e-4,
                       lambda_smooth=1e-4, num_iters=2000000, num_iters_decay=100000, model_save_step=2000,
                       outputs_dir='outputs/ganmut')
# `--mode demo --model ganmut`: the 64 px GANimation demo's settings (above), for GANmut: 2,500 iterations.
# lambda_prediction 5 (released: 0.5; only the gaussian space uses it): with 0.5 the attention mask
# saturates at 1 within a few hundred iterations and the gaussian demo only copies (docs/notebook.md).
GANMUT_DEMO = dict(image_size=64, g_conv_dim=32, d_conv_dim=32, g_repeat_num=3, d_repeat_num=5, batch_size=16,
                   num_iters=2500, num_iters_decay=500, n_critic=2, g_lr=2e-4, d_lr=2e-4, lambda_smooth=1.0,
                   lambda_prediction=5.0,
                   sample_step=250, model_save_step=500, log_step=10, eval_step=500, synthetic_images=2000,
                   eval_pairs=280, outputs_dir='outputs/demo_ganmut')


def shows_default(action):
    """Whether --help shows the option's default: not for switches, empty strings and unset values."""
    return not (action.default is None or action.default is False or action.default is argparse.SUPPRESS
                or action.default in ('', []))


class OneLineHelp(argparse.RawDescriptionHelpFormatter):
    """--help with one line per option: the flag, its choices, what it does and its default."""

    def _format_action(self, action):
        flag = action.option_strings[-1] + (' {' + ','.join(map(str, action.choices)) + '}' if action.choices else '')
        default = f' [{action.default}]' if shows_default(action) else ''
        return f'  {flag:<28} {action.help}{default}\n'


class Parser(argparse.ArgumentParser):
    """argparse whose errors are the project's one-line FlagError (main prints it; exit status 2)."""

    def error(self, message):
        flag, _, problem = message.partition(': ')
        if flag.startswith('argument '):
            flag = flag[len('argument '):].split('/')[-1]
            message = f'{flag} {problem}' if ': must be ' in problem else f'{flag}: {problem}'
        raise FlagError(f'{message} (python main.py --help lists the options)')


def in_range(kind, valid):
    """argparse type of a flag with a Range or Pattern: the value converted, or an error naming it and `valid`."""
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not valid.holds(value):
            raise argparse.ArgumentTypeError(f'{text}: must be {valid.describe(kind)}')
        return value
    convert.__name__ = kind.__name__      # argparse names the type in some messages
    convert.kind, convert.valid = kind, valid
    return convert


def build_parser():
    p = Parser(description=__doc__, formatter_class=OneLineHelp, add_help=False,
               usage='python main.py [--mode MODE] [--model MODEL] [--option VALUE ...]')
    for title, flags in FLAG_GROUPS:
        g = p.add_argument_group(title)
        for flag, default, help_text, *valid in flags:
            kind = KINDS.get(flag) or type(default)
            if default is False:
                g.add_argument(flag, action='store_true', help=help_text)
            elif isinstance(default, list):
                g.add_argument(flag, nargs='+', default=default, help=help_text)
            elif kind in (int, float) or valid:
                if not valid:
                    raise TypeError(f'{flag}: a numeric option needs its valid Range in FLAG_GROUPS')
                g.add_argument(flag, type=in_range(kind, valid[0]), default=default, help=help_text)
            else:
                g.add_argument(flag, type=kind, default=default, help=help_text, choices=CHOICES.get(flag))
    p._action_groups[2].add_argument('-h', '--help', action='help', help='this list, and stop')
    return p


# The original GANmut code's names for the run's folders and for --resume_iters: they apply to both models.
SEED_ALIASES = ('sample_dir', 'log_dir', 'model_save_dir', 'result_dir', 'resume_iter')
# Flags of one model only, refused with the other (chosen by --model; in test and eval modes by the checkpoint).
GANMUT_ONLY = tuple(f[0][2:] for f in GANMUT_FLAGS if f[0][2:] not in SEED_ALIASES)
GANIMATION_ONLY = ('aus', 'lambda_cls_end', 'lambda_gp', 'adv_loss', 'lambda_r1', 'lambda_color_keep', 'd_augment',
                   'virtual', 'virtual_weight', 'target_noise', 'g_condition', 'g_ema_beta', 'target_aus',
                   'test_attributes_path', 'test_reference_dir', 'interpolate', 'smooth', 'source_aus', 'driving_video')


def refuse_the_other_models_flags(given, model_name, why='--model'):
    """A flag of the other model is an error, never silently ignored. `why`: what chose the model."""
    mine, theirs, other = (('GANmut', 'GANimation', GANIMATION_ONLY) if model_name == 'ganmut'
                           else ('GANimation', 'GANmut', GANMUT_ONLY))
    wrong = [f for f in other if f in given]
    if wrong:
        raise FlagError(f'--{wrong[0]} is a {theirs} option; it does not apply to {mine} ({why})')


def setup_ganmut(cfg, given):
    """GANmut's defaults and the original GANmut code's flag names; `given`: explicit_flags().

    A GANmut-only flag without --model selects GANmut (so the original commands work as they are)."""
    ganmut_only = given & set(GANMUT_ONLY)
    if 'model' not in given and ganmut_only:
        print(f'note: --{sorted(ganmut_only)[0]} is a GANmut flag: using --model ganmut')
        cfg.model = 'ganmut'
    if cfg.resume_iter and 'resume_iters' not in given:
        cfg.resume_iters = cfg.resume_iter
    if cfg.mode not in ('test', 'eval'):       # there the checkpoint chooses the model (test_and_eval)
        refuse_the_other_models_flags(given, cfg.model)
    if cfg.model != 'ganmut':
        return
    for k, v in GANMUT_DEFAULTS.items():
        if k not in given:
            setattr(cfg, k, v)
    if cfg.parametrization == 'gaussian' and 'cycle_loss' not in given:
        cfg.cycle_loss = 'original'
    cfg.regularization_type = cfg.regularization_type.lower()
    if cfg.dataset_root:
        if cfg.image_dir or cfg.attr_path:
            raise FlagError('give either --dataset_root (with --imgs_folder) or --image_dir and --attr_path')
        cfg.image_dir = os.path.join(cfg.dataset_root, cfg.imgs_folder)
        cfg.attr_path = os.path.join(cfg.dataset_root, 'training.csv')


# Files and folders a user names, and what is expected there (checked before a run reads or writes anything).
INPUT_PATHS = {
    'dataset_root': ('folder', 'a GANmut dataset: <dataset_root>/<imgs_folder>/ and training.csv'),
    'dataset': ('folder', 'a dataset folder (images/ and a label file), or auto or synthetic'),
    'image_dir': ('folder', 'the training images'),
    'attr_path': ('file', 'the labels: an AU table .txt, an AU dict .pkl or an emotion .csv'),
    'test_images_dir': ('file or folder', 'the faces to edit: one image or video, or a folder of images'),
    'driving_video': ('file', 'a video of a face whose expressions the test faces play'),
    'test_attributes_path': ('file', 'an AU sequence: an AU table .txt or an OpenFace .csv'),
    'test_reference_dir': ('folder', 'the reference frames of the AU sequence'),
    'init_from': ('file', 'a released generator file, or a checkpoint of this code (docs/released.md)'),
    'test_models_dir': ('file or folder', 'checkpoints (iter_*.ckpt), or a released generator file (docs/released.md)'),
    'source_labels': ('file', 'a CSV naming each image file and its emotion (docs/data.md)'),
    'openface_dir': ('folder', 'OpenFace\'s FaceLandmarkImg output for the --source photos (<photo>.csv)'),
}


def check_inputs(cfg):
    """Every file or folder named on the command line exists and is of the right kind; the run's options fit
    together. Raises MissingInput or FlagError naming the flag, the path and what was expected there."""
    from model import check_critic
    from utils.errors import MissingInput
    for name, (kind, expected) in INPUT_PATHS.items():
        path = getattr(cfg, name)
        if not path or (name == 'dataset' and (path in ('auto', 'synthetic') or cfg.mode == 'prepare')):
            continue
        if not os.path.exists(path):
            raise MissingInput(f'--{name} {path}: no such {kind}; expected {expected}')
        if kind == 'folder' and not os.path.isdir(path) or kind == 'file' and os.path.isdir(path):
            raise MissingInput(f'--{name} {path}: {"a file" if kind == "folder" else "a folder"}, not a {kind}; '
                               f'expected {expected}')
    if cfg.mode in ('train', 'demo', 'bench'):
        check_critic(cfg.image_size, cfg.d_repeat_num, cfg.d_local_head)


# What a file given to --init_from decides: the networks' shapes and variants (released.py's formats set the
# conv biases, the norm and the channel order, which have no flags).
ARCHITECTURE = ('image_size', 'g_conv_dim', 'g_repeat_num', 'g_upsample', 'g_warp', 'g_condition', 'g_conv_bias',
                'g_norm_affine', 'g_channels', 'd_conv_dim', 'd_repeat_num', 'd_local_head', 'emotion_dim',
                'parametrization', 'attention')


def architecture_of(cfg, given):
    """--init_from: the run takes the file's architecture; a flag given with another value is refused."""
    from model import Trained
    trained = Trained.newest(cfg.init_from)
    if trained.model != cfg.model:
        raise FlagError(f'--init_from {cfg.init_from}: a {trained.model} model; this run trains {cfg.model} '
                        f'(--model {trained.model})')
    for key in ARCHITECTURE:
        if key not in trained.config or (key.startswith('d_') and 'D' not in trained.ckpt):
            continue
        value = trained.config[key]
        if key in given and getattr(cfg, key) != value:
            raise FlagError(f'--{key} {getattr(cfg, key)}: --init_from {cfg.init_from} has {key} {value}')
        setattr(cfg, key, value)


def explicit_flags(parser, argv):
    """Names of the options given on the command line (so the demo does not override them)."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != 'help':
            kw = {'nargs': action.nargs} if action.nargs is not None else {}
            if isinstance(action, argparse._StoreTrueAction):
                probe.add_argument(*action.option_strings, dest=action.dest, action='store_true',
                                   default=argparse.SUPPRESS)
            else:
                probe.add_argument(*action.option_strings, dest=action.dest, default=argparse.SUPPRESS, **kw)
    return set(vars(probe.parse_known_args(argv)[0]))


def scorer_of(model_name):
    """The evaluation's scorer of a model: what its --mode eval and --eval_step figures are."""
    from evaluation.au_scores import AUScorer
    from evaluation.emotion_scores import EmotionScorer
    return EmotionScorer if model_name == 'ganmut' else AUScorer


def train(cfg):
    """Train the model of --model, scored every --eval_step by its scorer."""
    import solver
    from evaluation.runner import TrainingProbe
    from ganmut.solver import GANmutSolver
    probe = functools.partial(TrainingProbe, scorer_class=scorer_of(cfg.model))
    return solver.train(cfg, GANmutSolver if cfg.model == 'ganmut' else solver.Solver, probe)


def test_and_eval(cfg, given):
    """Test mode (animations and edits) and/or eval mode, for the model of the run's newest checkpoint
    (read once; it says which model made it). `given`: the flags on the command line."""
    from editing import animate
    from evaluation import runner
    from ganmut import edit
    from model import Trained
    from utils.records import STAGES, mode_folder
    trained = Trained.newest(mode_folder(cfg, 'models'))
    if cfg.mode != 'demo':
        refuse_the_other_models_flags(given, trained.model, f'the model of {trained.path}')
        made = trained.config.get('parametrization')
        if 'parametrization' in given and cfg.parametrization != made:
            raise FlagError(f'--parametrization {cfg.parametrization}: {trained.path} holds a {made} space')
    if cfg.mode in ('test', 'demo'):
        with STAGES.timed('test mode'):
            (edit if trained.model == 'ganmut' else animate).run(cfg, trained)
    if cfg.mode in ('eval', 'demo'):
        with STAGES.timed('eval'):
            runner.run(cfg, trained, scorer_of(trained.model))


def check_length(cfg, given):
    """--train_minutes sets --num_iters, so not both; and only where something is trained."""
    if 'train_minutes' in given and cfg.mode not in ('train', 'demo'):
        raise FlagError(f'--train_minutes: nothing is trained in --mode {cfg.mode}')
    if cfg.train_minutes and 'num_iters' in given:
        raise FlagError('--train_minutes sets --num_iters from the speed measured at the start: give one of them')


def check_face_flags(cfg, given):
    """--face_framing read now (a folder of crops is measured, and training records the numbers);
    --face_margin only frames --face_box boxes; a video sets its own frame rate and finds its faces."""
    from editing import video
    video_in = bool(cfg.test_images_dir) and video.is_video(cfg.test_images_dir)
    if 'fps' in given and (cfg.driving_video or video_in):
        raise FlagError('--fps: a video plays at its own frame rate (--driving_video, or a video as --test_images_dir)')
    if cfg.driving_video and (cfg.test_attributes_path or cfg.target_aus):
        raise FlagError('--driving_video is an AU sequence: give it, --test_attributes_path or --target_aus, '
                        'not two of them')
    if cfg.face_box and video_in:
        raise FlagError('--face_box: the faces of a video are found in every frame; leave --face_box out')
    if 'face_margin' in given and not cfg.face_box:
        raise FlagError('--face_margin frames boxes given by --face_box; detected faces are framed by '
                        '--face_framing')
    if cfg.face_framing != 'auto':
        from editing import photos
        cfg.face_framing = photos.framing_of_flag(cfg.face_framing).spec()
    elif cfg.mode in ('train', 'demo') and cfg.dataset not in ('auto', 'synthetic') and not cfg.image_dir:
        framing_file = os.path.join(cfg.dataset, 'framing.json')      # a folder written by --mode prepare
        if os.path.isfile(framing_file):
            from editing.framing import framing_from
            cfg.face_framing = framing_from(framing_file).spec()       # recorded in the config and checkpoints


# What --mode prepare takes; any other flag is refused (it would change nothing there).
PREPARE_FLAGS = ('mode', 'source', 'dataset', 'image_size', 'face_framing', 'prepare_fps', 'test_fraction',
                 'identity_regex', 'source_labels', 'openface_dir', 'seed')
PREPARE_ONLY = ('source', 'prepare_fps', 'test_fraction', 'identity_regex', 'source_labels', 'openface_dir')


def check_prepare_flags(cfg, given):
    """--mode prepare: its flags only, a --source and an output folder; its flags nowhere else."""
    if cfg.mode != 'prepare':
        wrong = sorted(given & set(PREPARE_ONLY))
        if wrong:
            raise FlagError(f'--{wrong[0]} applies to --mode prepare only')
        return
    wrong = sorted(given - set(PREPARE_FLAGS))
    if wrong:
        raise FlagError(f'--{wrong[0]} does not apply to --mode prepare; it takes '
                        + ', '.join(f'--{f}' for f in PREPARE_FLAGS[1:]))
    if not cfg.source:
        raise FlagError('--mode prepare needs --source: folders of photos, photos or videos')
    if cfg.dataset in ('auto', 'synthetic'):
        raise FlagError('--mode prepare writes a dataset folder: give it as --dataset OUT (e.g. data/mine)')
    if cfg.identity_regex:
        try:
            re.compile(cfg.identity_regex)
        except re.error as e:
            raise FlagError(f'--identity_regex {cfg.identity_regex!r}: not a regular expression ({e})') from None


# What --mode app takes; any other flag is refused (it would change nothing there).
APP_FLAGS = ('mode', 'model', 'test_models_dir', 'test_results_dir', 'outputs_dir', 'device', 'amp', 'test_num_faces')


def check_app_flags(given):
    wrong = sorted(given - set(APP_FLAGS))
    if wrong:
        raise FlagError(f'--{wrong[0]} does not apply to --mode app; it takes '
                        + ', '.join(f'--{f}' for f in APP_FLAGS[1:]))


def main(argv=None):
    started = time.time()
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)        # every numeric flag within its Range, before anything else
    except FlagError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    cfg.argv = list(argv)          # the command line, for the run record (records.run_record)
    import data_loader  # after parsing: --help needs no torch
    from utils.records import STAGES
    STAGES.reset()                 # the demo's closing line lists this command's stages only
    from utils import distributed
    from utils.errors import TrainingStopped, UserError
    try:
        given = explicit_flags(parser, argv)
        setup_ganmut(cfg, given)       # GANmut's defaults and the original GANmut code's flags
        if cfg.mode == 'demo':
            for k, v in (GANMUT_DEMO if cfg.model == 'ganmut' else DEMO).items():
                if k not in given:
                    setattr(cfg, k, v)
            if 'dataset' not in given and not cfg.image_dir:
                cfg.dataset = 'synthetic'
            if 'num_iters' in given and 'train_minutes' not in given:
                cfg.train_minutes = 0.0          # the demo's length in iterations instead of minutes
        check_length(cfg, given)
        check_inputs(cfg)
        check_face_flags(cfg, given)
        if cfg.init_from and cfg.mode in ('train', 'demo'):
            architecture_of(cfg, given)
        data_loader.set_bad_data_policy(cfg.on_bad_data)
        check_prepare_flags(cfg, given)
        if cfg.mode == 'prepare':
            from prepare import run
            run.prepare(cfg)
            return 0
        if cfg.mode == 'app':
            check_app_flags(given)
            from app import page
            page.serve(cfg, given)
            return 0
        if cfg.mode == 'bench':
            from evaluation import bench
            bench.run(cfg)
            return 0
        if cfg.mode in ('train', 'demo'):
            ranks = distributed.init(cfg)        # torchrun: join the process group (utils/distributed.py)
            try:
                with contextlib.redirect_stdout(sys.stdout if ranks.is_main else open(os.devnull, 'w')):
                    if ranks.active:
                        print(f'distributed: world size {ranks.world} ({ranks.backend}); --batch_size '
                              f'{cfg.batch_size} per rank, {cfg.batch_size * ranks.world} per iteration')
                    if cfg.mode == 'demo' and cfg.model == 'ganimation' and ranks.is_main and not cfg.resume_iters:
                        from editing import animate
                        animate.pretrained_preview(cfg)     # something to look at while it trains
                    train(cfg)
                # every rank done before any tears down its process group (a rank once aborted in
                # gloo at the end of a two-rank run; rare, cause not pinned down)
                distributed.barrier()
            finally:
                distributed.shutdown()
            if not ranks.is_main:
                return 0
        if cfg.mode in ('test', 'eval', 'demo'):
            test_and_eval(cfg, given)
        if cfg.mode == 'demo':
            from utils.records import duration
            print(f'demo done in {duration(time.time() - started)}: {STAGES.summary()}')
    except UserError as e:                       # bad flags, data or checkpoints: one line, no traceback
        print(f'error{distributed.who()}: {e}', file=sys.stderr)
        distributed.record_error(e)
        return 2
    except TrainingStopped as e:                 # a signal, or non-finite losses: a checkpoint is safe
        print(f'stopped{distributed.who()}: {e}', file=sys.stderr)
        distributed.record_error(e)
        return e.exit_code
    return 0


if __name__ == '__main__':
    from utils import distributed
    sys.exit(distributed.entry_point(main)())
