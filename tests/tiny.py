"""Shared by the end-to-end tests: the tiny model (32 px, 8 channels, a fraction of a second per
iteration) and checks of what a run did."""
import os

TINY_MODEL = ['--image_size', '32', '--g_conv_dim', '8', '--d_conv_dim', '8', '--g_repeat_num', '1',
              '--d_repeat_num', '3', '--batch_size', '4', '--n_critic', '2', '--num_workers', '0']


def assert_resumed(out, original, linked, iteration):
    """A resumed run, not one that trained again from iteration 0 (training is a pure function of the
    seed and the iteration, so both end with the same weights): it said where it resumed from, and the
    checkpoint it resumed from is still the hard link to `original`, not rewritten by a second save."""
    assert f'resumed from {linked} (iteration {iteration})' in out
    assert os.path.samefile(original, linked)


def tiny_solver(tmp_path, *flags):
    """A Solver of the tiny GANimation (a generator step every iteration, fp32) on 12 synthetic 32 px
    faces written in tmp_path, with extra command-line flags."""
    import data_loader as dl
    import main
    import synthetic_faces as sf
    from solver import Solver
    if not (tmp_path / 'aus.txt').exists():
        sf.write_dataset(str(tmp_path), num_images=12, image_size=32, seed=2, verbose=False)
    cfg = main.build_parser().parse_args(
        ['--image_dir', str(tmp_path / 'images'), '--attr_path', str(tmp_path / 'aus.txt'),
         '--outputs_dir', str(tmp_path / 'o'), '--amp', 'off'] + TINY_MODEL + ['--n_critic', '1', *flags])
    return Solver(cfg, dl.au_dataset(cfg.image_dir, cfg.attr_path, 32, 'all'))


def quick_reader(monkeypatch):
    """The evaluation's separate reader fitted in 20 iterations instead of minutes (for tests that run
    eval or the training probes end to end)."""
    from evaluation import reader as ev
    real = ev.fit_reader

    def fit(train_set, device, amp_dtype=None, log=print, **kw):
        return real(train_set, device, amp_dtype=amp_dtype, log=None, **dict(kw, iters=20, batch_size=8))
    monkeypatch.setattr(ev, 'fit_reader', fit)
