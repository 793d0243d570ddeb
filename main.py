"""Entry point: parses the flags and dispatches to training, test mode or the demo.

    python main.py --mode train                  # GANimation on data/celeba, else the synthetic faces
    python main.py --mode test                   # animate faces with the newest checkpoint
    python main.py --mode eval                   # score the newest checkpoint (SPEC section 7)
    python main.py --mode demo                   # CPU-sized train + test + eval on the synthetic faces
    python main.py --mode bench --bench_compare   # time training and inference, optimised vs plain
    python main.py --model ganmut                # GANmut (learned emotion space); --mode test/eval/demo too

Every default is below, visible and editable, as in the seed README.
"""
import argparse
import contextlib
import functools
import os
import sys

from utils.errors import FlagError

# (flag, default, help). Edit the defaults here.
#
# Five defaults differ from the seed's, each measured against the true renderings (EVALUATION.md); the
# seed's values are `--lambda_smooth 1e-4 --n_critic 5 --g_lr 1e-4 --d_lr 1e-4 --lambda_cls_end -1`:
# - lambda_smooth 1.0 (mean-based TV) is about the official code's sum-based 1e-5 at batch 25, 128 px; with
#   the seed's 1e-4 the mask breaks into dots and saturates at 1 (at 64 px and at 128 px).
# - The generator's AU weight ramps from 160 to 20 (--lambda_cls_end): the strong AU push gets the edits going,
#   the weaker one later leaves room for realism (-0.13 after 3,000 iterations; -0.58 after 2,500 with 160 throughout).
# - A generator step every iteration (n_critic 1) at lr 2e-4 was ahead of n_critic 2 at every point of a
#   3,000-iteration run (-0.09 against -0.16 at the end). With all five, the 128 px paper architecture (batch 25)
#   reached edit_error_reduction -0.48 after 850 iterations against -1.06 with the seed's values, and +0.37
#   after 8,500 (EVALUATION.md, session 11).
MODEL_FLAGS = [
    ('--c_dim', 17, 'number of AUs (GANimation) or emotion classes (GANmut); AU tables give 17'),
    ('--image_size', 128, 'training image size (power of two, >= 32)'),
    ('--g_conv_dim', 64, 'channels of the first generator conv'),
    ('--d_conv_dim', 64, 'channels of the first critic conv'),
    ('--g_repeat_num', 6, 'residual blocks in the generator'),
    ('--d_repeat_num', 6, 'stride-2 convs in the critic (needs image_size >= 2**d_repeat_num)'),
    ('--d_label_trunk', 'shared', 'critic: shared (one trunk feeds the realism and AU heads, as the seed) or '
                                  'separate (the AU head gets its own trunk)'),
    ('--d_local_head', 0, 'critic: 0 (the seed) or N, a second realism head on the features of the critic\'s '
                          'N-th layer, averaged with the last layer\'s, so edits are also scored on local '
                          'texture (at 64 px, 1: 32 x 32 scores, each seeing ~8 px, the demo\'s; 2: 16 x 16, ~18 px)'),
    ('--g_upsample', 'transposed', 'generator decoder: transposed (4x4 stride-2 transposed convs, as the seed) '
                                   'or resize (nearest upsampling + 3x3 conv)'),
    ('--g_color_head', 'tanh', 'generator colour head: tanh (the seed) or residual (input + a zero-initialised '
                               'conv, mask starting at 0.5: training starts from the identity)'),
    ('--g_warp', 0, 'generator flow head: 0 off (the seed); k >= 1 adds a zero-initialised head whose flow '
                    'field (one vector per k x k pixels) moves the input\'s pixels before the mask blends'),
    ('--g_condition', 'target', 'generator condition: target (the target AUs, as the seed) or relative '
                                '([target, target - source]: the source\'s AUs are its labels in training and '
                                'evaluation, the critic\'s reading of the face in test mode); GANimation only'),
]
LOSS_FLAGS = [
    ('--lambda_cls', 160.0, 'AU regression weight; loss = mean over batch and AUs (160 = official 4000 '
                            'summed over a batch of 25)'),
    ('--lambda_cls_end', 20.0, 'generator\'s AU weight at the last iteration, reached linearly from --lambda_cls '
                                '(-1: constant, the seed): a strong AU push first, more room for realism later'),
    ('--lambda_cls_d', -1.0, 'AU regression weight in the critic\'s loss; -1: the same as --lambda_cls (as the seed). '
                              'The AU head shares the critic\'s trunk: a large weight there makes the trunk an AU '
                              'regressor and the real/fake head weak'),
    ('--au_noise', 0.0, 'std of gaussian noise added to the images the critic\'s AU head reads (images in [-1, 1]); '
                        'makes the head read shapes rather than faint patterns the generator can paint'),
    ('--au_blur', 0.0, 'sigma in pixels of a gaussian blur applied to the images the critic\'s AU head reads: '
                       'high frequencies then carry no AU gradient, so the generator cannot meet its AU targets '
                       'with fine patterns and must change shapes (0 = off)'),
    ('--au_adv_eps', 0.0, 'adversarial training of the critic\'s AU head: it learns on real images moved by up to '
                          'this much per pixel (L-inf, images in [-1, 1]) in the direction that most increases its '
                          'error (FGSM with a random start), so faint patterns move its reading less. 0.03 helped '
                          'one demo run and left another copying its input (EVALUATION.md, session 6); 0 = off'),
    ('--lambda_au_jac', 0.0, 'penalty on the input gradient of the critic\'s AU head (at the GP\'s interpolates): '
                             'the head must read shapes, not faint patterns the generator can paint'),
    ('--lambda_color_tv', 0.0, 'total variation of the colour head where the mask uses it (weighted by 1 - A): '
                               'keeps the edited regions piecewise smooth instead of patterned'),
    ('--lambda_color_keep', 0.0, 'L1 between the colour head and the input where the mask keeps the input '
                                 '(weighted by A): the colour head stays a picture of the face, so what the mask '
                                 'lets through is the face plus the edit rather than a pattern'),
    ('--d_augment', 'none', 'augmentation of what the critic\'s realism head reads, real and fake alike: none (the '
                            'seed) or translation (each image shifted by up to 1/8 of its size, zero-filled; '
                            'DiffAugment, differentiable, so the generator is scored through it too); the AU head '
                            'reads the unshifted images (one more critic pass)'),
    ('--lambda_rec', 10.0, 'cycle-consistency (reconstruction) weight'),
    ('--lambda_gp', 10.0, 'gradient-penalty weight (--adv_loss wgan-gp)'),
    ('--adv_loss', 'wgan-gp', 'adversarial loss: wgan-gp (the seed: Wasserstein critic, gradient penalty on '
                              'interpolates) or ns-r1 (non-saturating logistic loss, R1 penalty on real images, '
                              'as StarGAN v2: the critic is not 1-Lipschitz, so faint artefacts can cost the '
                              'generator more)'),
    ('--lambda_r1', 1.0, 'R1 weight (--adv_loss ns-r1): lambda * mean ||grad D(x_real)||^2'),
    ('--lambda_sat', 0.1, 'attention saturation weight: mean(A), pushes the mask away from copying the input'),
    ('--lambda_smooth', 1.0, 'attention smoothness weight; TV(A) is the mean-based total variation (the seed: 1e-4, '
                             'with which the mask breaks into dots and saturates at 1)'),
    ('--virtual_weight', 0.5, 'share of the virtual cycle in the cycle term with --virtual'),
    ('--target_noise', 0.1, 'uniform noise added to drawn target AUs (in [0, 1] units)'),
]
TRAIN_FLAGS = [
    ('--batch_size', 16, 'images per batch (per process)'),
    ('--num_iters', 200000, 'critic iterations (the generator is updated every n_critic)'),
    ('--num_iters_decay', 100000, 'decay the learning rates linearly to 0 over these last iterations '
                                  '(over the whole run when it is shorter)'),
    ('--n_critic', 1, 'critic updates per generator update (the seed: 5)'),
    ('--g_lr', 2e-4, 'generator learning rate (the seed: 1e-4)'),
    ('--d_lr', 2e-4, 'critic learning rate (the seed: 1e-4)'),
    ('--beta1', 0.5, 'Adam beta1'),
    ('--beta2', 0.999, 'Adam beta2'),
    ('--g_ema_beta', 0.0, 'keep an exponential moving average of the generator\'s weights with this decay per '
                          'generator step (e.g. 0.995) and use it for samples, test and eval (0: off)'),
    ('--seed', 0, 'seed of weights, batch order, flips and targets'),
    ('--num_workers', 2, 'data loader workers of the simple path (--data_cache false)'),
    ('--keep_checkpoints', 3, 'keep the newest N checkpoints'),
    ('--nonfinite_patience', 5, 'a step whose loss or gradients are not finite is skipped; stop after this many '
                                'iterations in a row with such a step'),
    ('--on_bad_data', 'error', 'bad images or label rows: error (stop, naming file and line) or skip '
                               '(drop them, counted and reported at start-up)'),
]
STEP_FLAGS = [
    ('--log_step', 10, 'log losses every N iterations'),
    ('--sample_step', 1000, 'save a sample grid every N iterations'),
    ('--model_save_step', 5000, 'save a checkpoint every N iterations'),
    ('--eval_step', 0, 'log evaluation figures on --eval_step_pairs pairs every N iterations (0: never)'),
    ('--eval_step_pairs', 96, '(source, target) pairs scored during training'),
    ('--eval_pairs', 512, '(source, target) pairs scored by --mode eval'),
]
TEST_FLAGS = [
    ('--test_images_dir', '', 'folder (or one file) of aligned face crops to animate, or of photos with '
                              '--detect_faces/--face_box (default: held-out synthetic faces)'),
    ('--test_attributes_path', '', 'AU sequence: .txt AU table or OpenFace video .csv; default: a built-in '
                                   'emotion sequence'),
    ('--test_reference_dir', '', 'folder of the reference frames named in the AU sequence '
                                 '(default: beside the sequence file)'),
    ('--test_models_dir', '', 'checkpoint folder (default: <outputs_dir>/models); the newest is used'),
    ('--test_results_dir', '', 'where results go (default: <outputs_dir>/results)'),
    ('--target_aus', '', 'explicit edit on top of the face\'s own AUs, e.g. "AU12=4,AU25=2"'),
    ('--test_num_faces', 6, 'held-out synthetic faces to animate when no --test_images_dir is given'),
    ('--test_batch_size', 64, 'frames per generator batch'),
    ('--grid_columns', 12, 'frames shown per row of the result grid'),
    ('--fps', 10, 'frames per second of the GIFs'),
    ('--interpolate', 0, 'frames added (linearly) between consecutive rows of the AU sequence'),
    ('--smooth', 0.0, 'gaussian smoothing of the AU curves over time: standard deviation in frames (0: off)'),
    ('--mp4', 'auto', 'also write every GIF as MP4: auto (when imageio-ffmpeg is installed), true, false'),
    ('--detect_faces', 'false', 'true: --test_images_dir holds photos: find every face (OpenCV, '
                                'requirements-extras.txt), crop it with the training framing, edit, paste back'),
    ('--face_box', '', 'face box(es) in the photo(s) by hand, x,y,w,h in pixels ("x,y,w,h;x,y,w,h" for several); '
                       'implies the photo handling of --detect_faces without needing OpenCV'),
    ('--face_margin', 0.15, 'photo crops: square of side face box * (1 + 2 * margin), centred on the box; 0.15 '
                            'matches the synthetic faces (python -m editing.photos --calibrate DIR measures it for other data)'),
]
# The demo: a CPU-sized model trained, animated (test mode) and scored (eval mode): ~11-13 minutes on 2 cores with
# AMX, ~25 with AVX-512 BF16 only. It keeps the default losses and optimiser settings above but two, which edit
# closer to the truth at 64 px: a tenth of the seed's gradient penalty (on all five seed comparisons, EVALUATION.md
# sessions 14-16) and a local realism head on the critic's first layer (32 x 32 scores of ~8 px each: ahead of
# the same head on layer 2 in four of five comparisons and in au_mae in all five, sessions 18-19; layer 2 was
# ahead of no head in three of four, session 17). The main defaults stay the seed's until they are measured on
# the 128 px model.
DEMO = dict(image_size=64, g_conv_dim=32, d_conv_dim=32, g_repeat_num=3, d_repeat_num=5, batch_size=16,
            num_iters=2500, num_iters_decay=500, lambda_gp=1.0, d_local_head=1,
            sample_step=250, model_save_step=500, log_step=10, eval_step=500, synthetic_images=2000,
            outputs_dir='outputs/demo')

# GANmut (--model ganmut, SPEC section 5). Flags it shares with GANimation (--c_dim, --lambda_cls,
# --num_iters, ...) take GANMUT_DEFAULTS, the released code's values, unless given on the command line.
GANMUT_FLAGS = [
    ('--parametrization', 'linear', 'GANmut emotion space: linear (one learned axis per emotion) or gaussian '
                                    '(one learned gaussian per emotion)'),
    ('--emotion_dim', 2, 'dimensions of the GANmut emotion code (2, or 3 for a 3-D space)'),
    ('--attention', 'true', 'GANmut generator: true = attention generator (A * x + (1 - A) * C), '
                            'false = the released plain generator (tanh output)'),
    ('--regularization_type', 'gp', 'GANmut critic regulariser: gp (on real-fake interpolates) or R1 (on real images)'),
    ('--cycle_loss', 'approximate', 'GANmut cycle code: approximate (own emotion\'s axis x critic confidence) or '
                                    'original (critic\'s code regression of the real image); gaussian: original '
                                    'unless given'),
    ('--lambda_reg', 10.0, 'GANmut critic regulariser weight (gp or R1)'),
    ('--lambda_g_strength', 1.0, 'GANmut linear: MSE(max softmax of the fake\'s logits, strength) weight'),
    ('--lambda_g_info', 1.0, 'GANmut linear: generator code-regression (info) weight'),
    ('--lambda_d_info', 1.0, 'GANmut linear: critic code-regression (info) weight'),
    ('--lambda_expr', 1.0, 'GANmut gaussian: critic code-regression weight'),
    ('--lambda_prediction', 0.5, 'GANmut gaussian: CE of the mean-coded fakes weight'),
    ('--n_r', 5, 'GANmut linear: codes per batch replaced by random directions'),
    ('--info_moves_space', 'false', 'GANmut linear: whether the generator\'s info term MSE(code_hat(x_f), z) also moves '
                                    'the axes (true) or only G (false: z detached in that term; with true the axes '
                                    'bunched together in short runs, pulled towards the untrained code regression)'),
    ('--wheel_frames', 48, 'GANmut --emotion_wheel: frames once around the plane'),
    # the GANmut seed's flag names
    ('--dataset_root', '', 'GANmut seed style: images in <dataset_root>/<imgs_folder>, labels <dataset_root>/training.csv'),
    ('--imgs_folder', 'imgs', 'GANmut seed style: images folder inside --dataset_root'),
    ('--sample_dir', '', 'GANmut seed alias: samples folder (default <outputs_dir>/samples)'),
    ('--log_dir', '', 'GANmut seed alias: TensorBoard folder (default <outputs_dir>/logs)'),
    ('--model_save_dir', '', 'GANmut seed alias: checkpoint folder (default <outputs_dir>/models); '
                             'also what test and eval modes read'),
    ('--result_dir', '', 'GANmut seed alias: results folder of test and eval modes (default <outputs_dir>/results)'),
    ('--resume_iter', '', 'GANmut seed alias of --resume_iters'),
]
# GANmut test mode: the edit (flags without a default value)
GANMUT_EDIT_FLAGS = [
    ('--theta', float, 'GANmut edit: angle of the code in degrees (z = rho (cos theta, sin theta))'),
    ('--rho', float, 'GANmut edit: radius of the code (1 = full strength of a linear axis); default 1'),
    ('--x', float, 'GANmut edit: first coordinate of the code, in [-1, 1]'),
    ('--y', float, 'GANmut edit: second coordinate of the code, in [-1, 1]'),
    ('--z', float, 'GANmut edit: third coordinate of a 3-D code (default 0)'),
    ('--emotion', str, 'GANmut edit: an emotion name (neutral, happy, sad, ...)'),
    ('--intensity', float, 'GANmut edit: intensity of --emotion, 0 (neutral) to 1 (its axis tip or mean); default 1'),
]
GANMUT_CHOICES = {'--parametrization': ['linear', 'gaussian'], '--attention': ['true', 'false'],
                  '--regularization_type': ['gp', 'R1', 'r1'], '--cycle_loss': ['approximate', 'original'],
                  '--info_moves_space': ['true', 'false']}
GANMUT_DEFAULTS = dict(c_dim=7, lambda_cls=1.0, lambda_rec=10.0, n_critic=5, batch_size=16, g_lr=1e-4, d_lr=1e-4,
                       lambda_smooth=1e-4, num_iters=2000000, num_iters_decay=100000, model_save_step=2000,
                       outputs_dir='outputs/ganmut')
# `--mode demo --model ganmut`: the CPU-sized GANimation demo's settings, for GANmut.
# lambda_prediction 5 (released: 0.5; only the gaussian space uses it): with 0.5 the attention mask
# saturates at 1 within a few hundred iterations and the gaussian demo only copies (EVALUATION.md).
GANMUT_DEMO = dict(image_size=64, g_conv_dim=32, d_conv_dim=32, g_repeat_num=3, d_repeat_num=5, batch_size=16,
                   num_iters=2500, num_iters_decay=500, n_critic=2, g_lr=2e-4, d_lr=2e-4, lambda_smooth=1.0,
                   lambda_prediction=5.0,
                   sample_step=250, model_save_step=500, log_step=10, eval_step=500, synthetic_images=2000,
                   eval_pairs=280, outputs_dir='outputs/demo_ganmut')


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--mode', default='train', choices=['train', 'test', 'eval', 'demo', 'bench'])
    p.add_argument('--model', default='ganimation', choices=['ganimation', 'ganmut'])
    p.add_argument('--dataset', default='auto',
                   help='auto: data/celeba when present, else the built-in synthetic faces; synthetic; or a folder')
    p.add_argument('--image_dir', default='', help='images folder (overrides --dataset)')
    p.add_argument('--attr_path', default='', help='label file: .txt AU table, .pkl AU dict, .csv emotions')
    p.add_argument('--aus', default='', help='train on a subset of AUs, e.g. AU01,AU12,AU25')
    p.add_argument('--synthetic_dir', default='data/synthetic', help='where the synthetic faces are written')
    p.add_argument('--synthetic_images', type=int, default=4000, help='synthetic faces to generate')
    p.add_argument('--outputs_dir', default='outputs/ganimation',
                   help='run folder: logs/ models/ samples/ results/ config.json')
    p.add_argument('--resume_iters', default='', help='resume training from iteration N or "latest"; "auto": the latest checkpoint '
                        'when there is one, else start (for jobs that get pre-empted and requeued)')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    p.add_argument('--amp', default='auto', choices=['auto', 'bf16', 'off'],
                   help='bf16 autocast; auto: on for CUDA and for CPUs with bf16 instructions (AMX, AVX-512 BF16)')
    p.add_argument('--channels_last', default='auto', choices=['auto', 'true', 'false'],
                   help='NHWC memory format for the convolutions')
    p.add_argument('--compile', default='auto', choices=['auto', 'true', 'false'],
                   help='torch.compile the generator\'s training passes; auto: on CUDA, and on the CPU for runs of '
                        '2,000 iterations or more when a C++ compiler is installed')
    p.add_argument('--small_conv_matmul', default='auto', choices=['auto', 'true', 'false'],
                   help='compute the critic\'s convolutions with at most 4 output pixels as one matrix product '
                        '(utils.fast_conv.SmallOutputConv2d); auto: on the CPU, where oneDNN runs them slowly')
    p.add_argument('--explicit_gp', default='auto', choices=['auto', 'true', 'false'],
                   help='gradient penalty from the critic\'s input gradient written out as transposed convolutions '
                        'instead of a double backward (same values); auto: on the CPU')
    p.add_argument('--fused_adam', default='auto', choices=['auto', 'foreach', 'false'],
                   help='auto: fused Adam (CUDA and CPU); foreach: multi-tensor updates; false: the per-parameter loop')
    p.add_argument('--bench_compare', action='store_true',
                   help='--mode bench: also time the plain path (fp32, eager, NCHW, loop Adam, simple loader)')
    p.add_argument('--bench_iters', type=int, default=30, help='--mode bench: timed training iterations')
    p.add_argument('--bench_warmup', type=int, default=5, help='--mode bench: untimed iterations first')
    p.add_argument('--bench_infer_repeats', type=int, default=10,
                   help='--mode bench: timed inference batches of --test_batch_size frames')
    p.add_argument('--data_cache', default='true', choices=['true', 'false'],
                   help='decode images once into a uint8 memory-mapped cache beside the dataset')
    p.add_argument('--virtual', action='store_true', help='virtual cycle-consistency loss (Kaneko et al.)')
    p.add_argument('--deterministic', action='store_true',
                   help='deterministic kernels (and no cudnn autotuning): a resumed run then matches an '
                        'uninterrupted one bit for bit on the same machine')
    for group, flags in (('model', MODEL_FLAGS), ('losses', LOSS_FLAGS), ('training', TRAIN_FLAGS),
                         ('cadence', STEP_FLAGS), ('test mode', TEST_FLAGS)):
        g = p.add_argument_group(group)
        for flag, default, help_text in flags:
            g.add_argument(flag, type=type(default), default=default, help=help_text)
    g = p.add_argument_group('GANmut (--model ganmut)', 'flags shared with GANimation take these values for GANmut '
                             'unless given: ' + ', '.join(f'--{k} {v}' for k, v in GANMUT_DEFAULTS.items()))
    for flag, default, help_text in GANMUT_FLAGS:
        g.add_argument(flag, type=type(default), default=default, help=help_text, choices=GANMUT_CHOICES.get(flag))
    for flag, kind, help_text in GANMUT_EDIT_FLAGS:
        g.add_argument(flag, type=kind, default=None, help=help_text)
    g.add_argument('--emotion_wheel', action='store_true', help='GANmut test mode: a GIF per face once around the plane')
    return p


def setup_ganmut(cfg, given):
    """GANmut's defaults and the GANmut seed's flag names; `given`: explicit_flags().

    A GANmut-only flag without --model selects GANmut (so the seed's commands work as they are)."""
    ganmut_only = {f[0][2:] for f in GANMUT_FLAGS + GANMUT_EDIT_FLAGS} | {'emotion_wheel'}
    if 'model' not in given and (given & ganmut_only) - {'resume_iter', 'model_save_dir', 'result_dir'}:
        print(f'note: --{sorted(given & ganmut_only)[0]} is a GANmut flag: using --model ganmut')
        cfg.model = 'ganmut'
    if cfg.resume_iter and 'resume_iters' not in given:
        cfg.resume_iters = cfg.resume_iter
    if cfg.model != 'ganmut':
        return
    if cfg.g_condition != 'target':
        raise FlagError('--g_condition relative is for GANimation: a GANmut condition is a point of its '
                         'emotion space, which has no source and target AUs')
    if cfg.d_augment != 'none':
        raise FlagError('--d_augment is for GANimation: GANmut\'s critic reads its images unaugmented')
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


def test_and_eval(cfg):
    """Test mode (animations and edits) and/or eval mode, for the model of the run's newest checkpoint
    (read once; it says which model made it)."""
    from editing import animate
    from evaluation import runner
    from ganmut import edit
    from model import Trained
    from utils.records import mode_folder
    trained = Trained.newest(mode_folder(cfg, 'models'))
    if cfg.mode in ('test', 'demo'):
        (edit if trained.model == 'ganmut' else animate).run(cfg, trained)
    if cfg.mode in ('eval', 'demo'):
        runner.run(cfg, trained, scorer_of(trained.model))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    cfg = parser.parse_args(argv)
    cfg.argv = list(argv)          # the command line, for the run record (records.run_record)
    import data_loader  # after parsing: --help needs no torch
    from utils import distributed
    from utils.errors import TrainingStopped, UserError
    try:
        setup_ganmut(cfg, explicit_flags(parser, argv))   # GANmut defaults and the seed's flags
        if cfg.mode == 'demo':
            given = explicit_flags(parser, argv)
            for k, v in (GANMUT_DEMO if cfg.model == 'ganmut' else DEMO).items():
                if k not in given:
                    setattr(cfg, k, v)
            if 'dataset' not in given and not cfg.image_dir:
                cfg.dataset = 'synthetic'
        data_loader.set_bad_data_policy(cfg.on_bad_data)
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
                    train(cfg)
                # every rank done before any tears down its process group (a rank once aborted in
                # gloo at the end of a two-rank run; rare, cause not pinned down)
                distributed.barrier()
            finally:
                distributed.shutdown()
            if not ranks.is_main:
                return 0
        if cfg.mode in ('test', 'eval', 'demo'):
            test_and_eval(cfg)
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
