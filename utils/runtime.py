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

# The CPU kinds whose speed differs for this model, from the CPU flags: bf16 matrix units (Intel AMX),
# bf16 vector instructions (AVX-512 BF16, e.g. AMD Zen 4), AVX-512 without bf16 (fp32), AVX2 only
# (fp32, most laptops that are not new), and everything else (other architectures).
CPU_KINDS = ('amx', 'avx512_bf16', 'avx512', 'avx2', 'other')

# Where each `auto` CPU switch was measured to help (docs/benchmarks.md has the tables, one per kind;
# 'avx2' was measured with PyTorch's, oneDNN's and MKL's kernels limited to AVX2 on an AVX-512
# machine). On a kind not listed the switch stays off: unmeasured is not assumed to help.
CPU_SWITCH_KINDS = {
    'amp': {'amx', 'avx512_bf16'},                      # bf16 autocast: 2.7x on AMX, 1.7x on AVX-512 BF16
    'channels_last': {'amx', 'avx512', 'avx2'},
    'compile': {'amx', 'avx512'},                       # AVX2: the compiled generator ran 4.7x slower
    'small_conv_matmul': {'amx', 'avx512'},             # AVX2: no change
    'explicit_gp': {'amx', 'avx512', 'avx2'},
    'fused_adam': {'amx', 'avx2'},                      # AVX-512 without BF16: foreach was as fast or faster
}


def cpu_flags():
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        with open(CPUINFO) as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def kernel_capability():
    """The vector width PyTorch's CPU kernels use: 'AVX512', 'AVX2', 'DEFAULT', 'SVE256', ... (the CPU's
    widest, unless ATEN_CPU_CAPABILITY limits it). One place, so that tests can fake a CPU whole: its
    flags (CPUINFO) and its kernels."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_kind(flags=None, capability=None):
    """One of CPU_KINDS. `flags`: the CPU's flags (default: read /proc/cpuinfo); `capability`: the vector
    width PyTorch's kernels use (default: kernel_capability()), which caps the kind: an AVX-512 CPU
    running AVX2 kernels is measured as AVX2."""
    flags = cpu_flags() if flags is None else set(flags)
    capability = (kernel_capability() if capability is None else capability).upper()
    if 'amx_bf16' in flags:
        kind = 'amx'
    elif 'avx512_bf16' in flags:
        kind = 'avx512_bf16'
    elif 'avx512f' in flags:
        kind = 'avx512'
    elif 'avx2' in flags and 'fma' in flags:
        kind = 'avx2'
    else:
        return 'other'
    if kind != 'avx2' and capability == 'AVX2':
        return 'avx2'
    return kind if capability in ('AVX512', 'AVX2') else 'other'


def measured_on_cpu(switch, device):
    """Whether `auto` turns the switch on for `device` on the CPU side: a CPU of a kind where it was
    measured to help (bf16 autocast: AMX and AVX-512 BF16; elsewhere bf16 is emulated and slower)."""
    return device.type == 'cpu' and cpu_kind() in CPU_SWITCH_KINDS[switch]


def resolve_amp(amp, device):
    """bf16 autocast where it is fast: CUDA GPUs with bf16, CPUs with bf16 matrix instructions."""
    if amp == 'off':
        return None
    if amp == 'bf16':
        return torch.bfloat16
    if device.type == 'cuda':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if measured_on_cpu('amp', device) else None


def resolve_flag(value, default):
    return default if value == 'auto' else value in (True, 'true', '1', 'yes')


COMPILE_MIN_ITERS_CPU = 2000   # compiling takes ~40 s on 2 cores and saves ~30 ms per iteration


def compile_on(cfg, device):
    """Whether --compile (see compiled) is on for this config and device."""
    # the compiler inductor will use: $CXX, else g++ (clang++ on macOS)
    cxx = os.environ.get('CXX') or ('clang++' if sys.platform == 'darwin' else 'g++')
    iters = getattr(cfg, 'planned_iters', None) or getattr(cfg, 'num_iters', 0)   # bench: the run it stands for
    # --train_minutes: a run of minutes does not win the compile time back, and the speed measured at
    # its start must be the run's
    on_cpu = (device.type == 'cpu' and iters >= COMPILE_MIN_ITERS_CPU and not getattr(cfg, 'train_minutes', 0)
              and shutil.which(cxx) is not None)
    return resolve_flag(getattr(cfg, 'compile', 'auto'),
                        device.type == 'cuda' or (on_cpu and measured_on_cpu('compile', device)))


_told_about_compiling = []


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
    if device.type == 'cpu':
        keep_compiled_kernels_apart()
    if device.type == 'cpu' and distributed.STATE.rank == 0 and not _told_about_compiling:
        _told_about_compiling.append(True)     # once a process (the bench builds several solvers)
        print('torch.compile: the first iterations compile the generator (under a minute on 2 cores, '
              'cached for later runs; --compile false skips it)')
    return torch.compile(module)


def keep_compiled_kernels_apart():
    """Inductor's cache for this kernel width: its default folder with the width appended, unless
    TORCHINDUCTOR_CACHE_DIR names another. PyTorch 2.13 does not key its cached C++ kernels by the width,
    so a cache written with AVX2 kernels fails to compile ('at::vec has not been declared') once
    ATEN_CPU_CAPABILITY=default is set on the same machine (and AVX-512 code would be reused under avx2)."""
    chosen = os.environ.get('TORCHINDUCTOR_CACHE_DIR')
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir   # importing inductor sets it
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = f'{default_cache_dir()}_{kernel_capability().lower()}'
    return os.environ['TORCHINDUCTOR_CACHE_DIR']


def small_conv_matmul_on(cfg, device):
    """--small_conv_matmul (utils.fast_conv.SmallOutputConv2d); auto: on the CPU kinds where it was
    measured to help."""
    return resolve_flag(getattr(cfg, 'small_conv_matmul', 'auto'), measured_on_cpu('small_conv_matmul', device))


def explicit_gp_on(cfg, device):
    """--explicit_gp: the gradient penalty from the critic's input gradient written out as
    transposed convolutions (model.Discriminator.realism_input_gradient) rather than a
    double backward; auto: on the CPU kinds where it was measured faster."""
    return resolve_flag(getattr(cfg, 'explicit_gp', 'auto'), measured_on_cpu('explicit_gp', device))


def channels_last_on(cfg, device):
    """--channels_last (NHWC activations and weights); auto: on CUDA (cuDNN's bf16 convolutions are
    NHWC) and on the CPU kinds where it was measured to help."""
    return resolve_flag(getattr(cfg, 'channels_last', 'auto'),
                        device.type == 'cuda' or measured_on_cpu('channels_last', device))


def adam_kind(cfg, device):
    """--fused_adam as the Adam it gives: 'fused' (true; auto on CUDA and on the CPU kinds where it was
    measured to help), 'foreach' (the multi-tensor path; auto elsewhere) or 'loop' (false)."""
    flag = getattr(cfg, 'fused_adam', 'auto')
    if flag == 'auto':
        return 'fused' if device.type == 'cuda' or measured_on_cpu('fused_adam', device) else 'foreach'
    return {'true': 'fused', 'false': 'loop'}.get(flag, flag)


def describe_switches(cfg, device):
    """One line: the CPU kind and what each `auto` switch resolved to (the start-up print and the bench)."""
    where = f'CPU kind {cpu_kind()}' if device.type == 'cpu' else f'device {device}'
    on = {'channels_last': channels_last_on(cfg, device), 'compile': compile_on(cfg, device),
          'small_conv_matmul': small_conv_matmul_on(cfg, device), 'explicit_gp': explicit_gp_on(cfg, device),
          'adam': adam_kind(cfg, device)}
    return f'{where}; ' + ', '.join(f'{k} {v}' for k, v in on.items())
