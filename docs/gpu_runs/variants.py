"""The GPU session of 2026-11-29 (docs/benchmarks.md): main.py with experimental patches from
environment variables:
X_COMPILE_D=1: compile the critic and the written-out penalty; X_MODE=reduce-overhead|...: compile mode;
X_PROFILE=path: profile one n_critic cycle of the first measured solver into path.
Written for evaluation/bench.py as of commit 5440ed4 (it patches bench.time_training, which later
became TrainingPath): check that commit out to run it again."""
import os
import sys
import time

sys.path.insert(0, os.getcwd())
import torch

import losses
import solver as solver_mod
from evaluation import bench

MODE = os.environ.get('X_MODE') or None
orig_build = solver_mod.Solver.build_networks


def build(self):
    orig_build(self)
    if self.cfg.compile == 'false':
        return
    if MODE and self.G_train is not self.G:
        self.G_train = torch.compile(self.G, mode=MODE)
    if os.environ.get('X_COMPILE_D'):
        raw = self.D
        self.D = torch.compile(raw, mode=MODE)
        gp = torch.compile(lambda x: losses.penalty_of_gradient(raw.realism_input_gradient(x)), mode=MODE)
        self.written_out_gradient_penalty = lambda x_hat: gp(x_hat.detach())


solver_mod.Solver.build_networks = build
if MODE == 'reduce-overhead':
    orig_step = solver_mod.Solver.train_step

    def step(self, *a):
        torch.compiler.cudagraph_mark_step_begin()
        return orig_step(self, *a)
    solver_mod.Solver.train_step = step

orig_time = bench.time_training
profiled = []


def time_training(cfg, train_set, warmup, iters):
    ms, solver, warm = orig_time(cfg, train_set, warmup, iters)
    path = os.environ.get('X_PROFILE')
    if path and not profiled:
        profiled.append(1)
        from torch.profiler import ProfilerActivity, profile
        batches = solver.batches(0)
        n = 2 * cfg.n_critic
        data = [next(batches) for _ in range(n)]
        bench._sync(solver.device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for i, (x, a) in enumerate(data):
                solver.train_step(warmup + iters + i, x, a)
            bench._sync(solver.device)
            wall = time.perf_counter() - t0
        ev = prof.key_averages()
        kernel_us = sum(e.self_device_time_total for e in ev if e.device_type == torch.autograd.DeviceType.CUDA)
        with open(path, 'w') as f:
            f.write(f'{n} iterations ({n // cfg.n_critic} n_critic cycles), wall {wall * 1000:.1f} ms under the '
                    f'profiler, GPU kernel time {kernel_us / 1000:.1f} ms ({kernel_us / 1e4 / wall:.0f}% busy)\n')
            f.write(ev.table(sort_by='self_device_time_total', row_limit=30, max_name_column_width=70) + '\n')
            f.write(ev.table(sort_by='self_cpu_time_total', row_limit=20, max_name_column_width=70) + '\n')
            f.write(f'kernel launches: {sum(e.count for e in ev if e.device_type == torch.autograd.DeviceType.CUDA)}\n')
    return ms, solver, warm


bench.time_training = time_training

import main  # noqa: E402
sys.exit(main.main(sys.argv[1:]))
