"""Runtime switches: the device, bf16 autocast, torch.compile and the CPU fast paths, each `auto` choice
made from what was measured on that kind of machine (docs/benchmarks.md)."""
import os
import shutil
import sys

import torch

from utils import distributed
from utils.errors import FlagError


def resolve_device(name):
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise FlagError('--device cuda was asked for, but PyTorch sees no CUDA GPU')
    return torch.device(name)


CPUINFO = '/proc/cpuinfo'


def cpu_has_fast_bf16():
    """CPUs with bf16 matrix instructions: AMX (Intel, 4-5x over fp32 for this model's convolutions)
    or AVX-512 BF16 (AMD Zen 4: 1.7x). Elsewhere bf16 would be emulated: left off."""
    try:
        with open(CPUINFO) as f:
            flags = f.read()
    except OSError:
        return False
    return 'amx_bf16' in flags or 'avx512_bf16' in flags


def resolve_amp(amp, device):
    """bf16 autocast where it is fast: CUDA GPUs with bf16, CPUs with bf16 matrix instructions."""
    if amp == 'off':
        return None
    if amp == 'bf16':
        return torch.bfloat16
    if device.type == 'cuda':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def resolve_flag(value, default):
    return default if value == 'auto' else value in (True, 'true', '1', 'yes')


COMPILE_MIN_ITERS_CPU = 2000   # compiling takes ~40 s on 2 cores and saves ~30 ms per iteration


def compile_on(cfg, device):
    """Whether --compile (see compiled) is on for this config and device."""
    # the compiler inductor will use: $CXX, else g++ (clang++ on macOS)
    cxx = os.environ.get('CXX') or ('clang++' if sys.platform == 'darwin' else 'g++')
    iters = getattr(cfg, 'planned_iters', None) or getattr(cfg, 'num_iters', 0)   # bench: the run it stands for
    on_cpu = device.type == 'cpu' and iters >= COMPILE_MIN_ITERS_CPU and shutil.which(cxx) is not None
    return resolve_flag(getattr(cfg, 'compile', 'auto'), device.type == 'cuda' or on_cpu)


def compiled(module, cfg, device):
    """torch.compile(module) with --compile true, else the module itself. auto: on CUDA; on
    the CPU when the run is long enough to win the compile time back and a C++ compiler
    (which the CPU backend needs) is installed; under auto a compile failure falls back
    to eager execution with a warning instead of stopping the run."""
    flag = getattr(cfg, 'compile', 'auto')
    if not compile_on(cfg, device):
        return module
    if flag == 'auto':
        torch._dynamo.config.suppress_errors = True
    if device.type == 'cpu' and distributed.STATE.rank == 0:
        print('torch.compile: the first iterations compile the generator (under a minute on 2 cores, '
              'cached for later runs; --compile false skips it)')
    return torch.compile(module)


def small_conv_matmul_on(cfg, device):
    """--small_conv_matmul (utils.fast_conv.SmallOutputConv2d); auto: on the CPU."""
    return resolve_flag(getattr(cfg, 'small_conv_matmul', 'auto'), device.type == 'cpu')


def explicit_gp_on(cfg, device):
    """--explicit_gp: the gradient penalty from the critic's input gradient written out as
    transposed convolutions (model.Discriminator.realism_input_gradient) rather than a
    double backward; auto: on the CPU, where it is measured faster."""
    return resolve_flag(getattr(cfg, 'explicit_gp', 'auto'), device.type == 'cpu')
