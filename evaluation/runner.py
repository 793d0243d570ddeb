"""Evaluation, kept apart from training: one runner for --mode eval and one training probe for --eval_step,
each given the model's scorer (evaluation.au_scores.AUScorer for GANimation, evaluation.emotion_scores.
EmotionScorer for GANmut; main.py chooses). A scorer is built from the data, the condition names, the image
size, the number of pairs, --seed, the device and the autocast type; it scores (G, D, space) and knows
its table, its learning-curve entries and what the results record of the model.

    python main.py --mode eval --outputs_dir outputs/demo
    python -m evaluation.runner outputs/demo/results/eval_curve.jsonl     # a learning curve as a table
"""
import json
import os

from data_loader import resolve_data
from utils import visualize as vis
from utils.errors import MissingInput
from utils.records import mode_folder
from utils.runtime import resolve_device


def data_of_checkpoint(cfg, trained):
    """(image_dir, attr_path) of the data to evaluate on: the flags' data when they name some (--dataset,
    --image_dir and --attr_path), else the data the checkpoint was trained on. A released model has no record
    of its data: the flags' data (the synthetic faces at the model's image size by default)."""
    ckpt_cfg = trained.config
    if cfg.image_dir or cfg.attr_path or cfg.dataset != 'auto' or trained.released:
        cfg.image_size = ckpt_cfg['image_size']
        data = resolve_data(cfg, "emotion" if trained.model == "ganmut" else "au")
        print(f'{"released model: " if trained.released else ""}evaluated on {data}')
    image_dir = cfg.image_dir or ckpt_cfg.get('image_dir')
    attr_path = cfg.attr_path or ckpt_cfg.get('attr_path')
    if not image_dir or not attr_path or not os.path.exists(attr_path):
        raise MissingInput(f'eval mode needs the data the model was trained on ({attr_path}); '
                           f'give --dataset, or --image_dir and --attr_path')
    return image_dir, attr_path


def run(cfg, trained, scorer_class):
    """--mode eval: score the checkpoint `trained` (model.Trained) on its data, the flags' data, or the faces
    of --test_images_dir; table on the console, JSON and a comparison grid in the results folder."""
    from editing.framing import of_model
    device = resolve_device(cfg.device)
    amp = trained.amp_dtype(cfg.amp, device)
    G, D, space = scorer_class.networks(trained, device)
    size = trained.config['image_size']
    framing = of_model(cfg, trained.config)
    if cfg.test_images_dir:
        data = cfg.test_images_dir
        scorer = scorer_class.of_photos(cfg, trained, size, framing, device, amp)
    else:
        image_dir, data = data_of_checkpoint(cfg, trained)
        scorer = scorer_class.create(image_dir, data, trained.label_names, size, cfg.eval_pairs, cfg.seed, device,
                                     amp, framing)
    res, draw_grid = scorer.score(G, D, space)
    it = trained.iteration
    res.update({'checkpoint': trained.path, 'iteration': it, 'image_size': size, 'data': data})
    res.update(scorer.about(trained, space))
    out_dir = mode_folder(cfg, 'results')
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f'eval_{it:08d}.json')
    with open(json_path, 'w') as f:
        json.dump(res, f, indent=1)
    grid_path = vis.save_png(draw_grid(), os.path.join(out_dir, f'eval_{it:08d}_grid.png'))
    print(f'evaluation of {trained.path} {scorer.heading(trained)}:')
    print(scorer.table(res))
    print(f'wrote {json_path} and {grid_path}')
    return res


class TrainingProbe:
    """--eval_step: the same figures on a small fixed subset during training, to TensorBoard (eval/...)
    and to results/eval_curve.jsonl."""

    def __init__(self, cfg, solver, num_pairs=96, scorer_class=None):
        from editing.framing import of_model
        self.scorer = scorer_class.create(cfg.image_dir, cfg.attr_path, solver.label_names, cfg.image_size,
                                          num_pairs, cfg.seed, solver.device, solver.amp_dtype,
                                          of_model(cfg, vars(cfg)))
        self.curve_path = os.path.join(solver.dirs['results'], 'eval_curve.jsonl')

    def __call__(self, solver, it):
        res, _ = self.scorer.score(solver.G_eval, solver.D, getattr(solver, 'space', None))
        entries = self.scorer.curve(res, flatten(res))
        for k, v in entries.items():
            if isinstance(v, float):
                solver.writer.add_scalar(f'eval/{k}', v, it)
        with open(self.curve_path, 'a') as f:
            f.write(json.dumps({'iteration': it, **entries}) + '\n')
        return res


def flatten(d, prefix=''):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def curve_table(path, keys=('edit_error_reduction', 'model.l1', 'model.ssim', 'au_mae', 'au_mae_floor',
                            'attn_mean', 'model.rec_l1')):
    """results/eval_curve.jsonl -> a Markdown table (for docs/notebook.md)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    keys = [k for k in keys if any(k in r for r in rows)]
    lines = ['| iteration | ' + ' | '.join(keys) + ' |', '|---' * (len(keys) + 1) + '|']
    for r in rows:
        lines.append(f'| {r["iteration"]} | ' + ' | '.join(
            f'{r[k]:.3f}' if isinstance(r.get(k), float) else '-' for k in keys) + ' |')
    return '\n'.join(lines)


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description='Print a learning curve (results/eval_curve.jsonl) as a table.')
    parser.add_argument('curve', help='path of an eval_curve.jsonl written by --eval_step')
    print(curve_table(parser.parse_args().curve))
