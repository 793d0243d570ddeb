"""--mode bench: the FLOP count by hand, the optimisation flags against the plain path, the JSON."""
import copy
import json
import os

import pytest
import torch
from tiny import TINY_MODEL

import data_loader as dl
import main
from evaluation import bench
from model import Discriminator, Generator
from solver import Solver
from utils import records, runtime

TINY = TINY_MODEL + ['--synthetic_images', '48']


def conv(out_hw, c_in, c_out, k):
    return 2 * out_hw * out_hw * c_in * c_out * k * k


def test_forward_flops_of_a_tiny_generator_and_critic_by_hand():
    G = Generator(conv_dim=2, c_dim=1, repeat_num=1)
    hand_g = (conv(8, 4, 2, 7)                       # 7x7 stem on image + condition
              + conv(4, 2, 4, 4) + conv(2, 4, 8, 4)  # two stride-2 convs
              + 2 * conv(2, 8, 8, 3)                 # one residual block
              + conv(2, 8, 4, 4) + conv(4, 4, 2, 4)  # transposed convs: per *input* pixel
              + conv(8, 2, 3, 7) + conv(8, 2, 1, 7))  # colour and attention heads
    assert hand_g == 125952
    assert bench.forward_flops(G, torch.zeros(1, 3, 8, 8), torch.zeros(1, 1)) == hand_g
    D = Discriminator(image_size=8, conv_dim=2, c_dim=5, repeat_num=2)
    hand_d = conv(4, 3, 2, 4) + conv(2, 2, 4, 4) + conv(2, 4, 1, 3) + conv(1, 4, 5, 2)
    assert bench.forward_flops(D, torch.zeros(1, 3, 8, 8)) == hand_d
    total, f_g, f_d = bench.step_flops(G, D, 8, 1, batch_size=3, n_critic=5)
    assert (f_g, f_d) == (hand_g, hand_d)
    assert total == pytest.approx(3 * (hand_g + 12 * hand_d) + 3 * (5 * hand_g + 2 * hand_d) / 5)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    synth = str(tmp_path_factory.mktemp('synthetic'))
    cfg = main.build_parser().parse_args(['--dataset', 'synthetic', '--synthetic_dir', synth,
                                          '--num_iters', '2', '--num_iters_decay', '0'] + TINY)
    dl.resolve_data(cfg, 'au')
    return cfg, dl.au_dataset(cfg.image_dir, cfg.attr_path, 32, 'train')


def test_optimised_and_plain_paths_agree(tiny):
    cfg, train_set = tiny
    fast = copy.copy(cfg)
    fast.amp, fast.channels_last = 'bf16', 'true'
    plain = bench.plain_config(cfg)
    s_fast, s_plain = Solver(fast, train_set), Solver(plain, train_set)   # same seed: same weights
    assert s_fast.memory_format == torch.channels_last and s_plain.memory_format == torch.contiguous_format
    assert s_plain.amp_dtype is None and s_plain.g_optim.defaults['foreach'] is False
    # the cached uint8 batches and the DataLoader's decoded ones are the same images
    x_fast, aus_fast = next(s_fast.batches(0))
    x_plain, aus_plain = next(s_plain.batches(0))
    assert torch.equal(x_fast.contiguous(), x_plain) and torch.equal(aus_fast, aus_plain)
    # bf16 + channels_last forward within bf16 tolerance of the fp32 one
    c = aus_plain
    with s_fast.autocast():
        y_fast, a_fast, _ = s_fast.G(x_fast, c)
    y_plain, a_plain, _ = s_plain.G(x_plain, c)
    assert (y_fast.float() - y_plain).abs().max() < 0.05 and (a_fast.float() - a_plain).abs().max() < 0.02
    # fused, foreach and for-loop Adam, and the critic's small convolutions as matrix products
    # with the gradient penalty written out, against the plain path (all fp32): the same update
    variants = []
    for adam, cpu_paths in (('true', 'true'), ('foreach', 'false'), ('foreach', 'true')):
        v = copy.copy(plain)
        v.fused_adam, v.small_conv_matmul, v.explicit_gp = adam, cpu_paths, cpu_paths
        variants.append(Solver(v, train_set))
    assert variants[0].g_optim.defaults['fused'] is True and variants[1].g_optim.defaults['foreach'] is True
    assert variants[0].D.main[-2].as_matmul and not variants[1].D.main[-2].as_matmul
    for s in variants + [s_plain]:
        s.train_step(1, x_plain, aus_plain)      # iteration 1: critic and generator steps (n_critic 2)
    lr = plain.g_lr
    for s in variants:
        for p, q in zip(list(s.G.parameters()) + list(s.D.parameters()),
                        list(s_plain.G.parameters()) + list(s_plain.D.parameters())):
            if s is variants[1]:     # the same arithmetic in another order of kernels
                assert torch.allclose(p, q, atol=1e-6)
            else:   # other float rounding of the gradients: Adam's first step is lr * sign(gradient),
                # so where a gradient is ~0 its sign, and that weight, may differ by up to 2 lr
                diff = (p - q).abs()
                assert diff.max() <= 2.01 * lr and (diff > 1e-6).float().mean() < 0.03


def test_bench_mode_writes_the_json_keys(tiny, tmp_path):
    cfg, _ = tiny
    rc = main.main(['--mode', 'bench', '--dataset', 'synthetic', '--synthetic_dir', cfg.synthetic_dir,
                    '--outputs_dir', str(tmp_path), '--bench_iters', '2', '--bench_warmup', '1',
                    '--bench_infer_repeats', '1', '--test_batch_size', '4', '--bench_compare', '--compile', 'false'] + TINY)
    assert rc == 0
    files = list((tmp_path / 'results').glob('bench*.json'))
    assert len(files) == 1
    r = json.loads(files[0].read_text())
    for key in ('ms_per_iter', 'images_per_s', 'tflops', 'peak_memory_mb', 'speedup'):
        assert r[key] > 0
    assert r['baseline']['ms_per_iter'] > 0 and r['baseline']['amp'] == 'off'
    assert r['speedup'] == pytest.approx(r['baseline']['ms_per_iter'] / r['ms_per_iter'])
    assert r['images_per_s'] == pytest.approx(4 * 1000 / r['ms_per_iter'])
    original = r['original_loop']['ms_per_iter']
    assert original > 0 and r['speedup_over_original'] == pytest.approx(original / r['ms_per_iter'])
    assert r['original_loop']['tflops'] == pytest.approx(r['flops_per_iter'] / original * 1e3 / 1e12)
    # n_critic 2 (TINY): two whole cycles of warm-up, the timed window in three rounds of one whole cycle
    assert (r['warmup_iters'], r['timed_iters'], r['rounds']) == (4, 6, 3) and r['warmup_s'] > 0 and r['compile_s'] >= 0
    for path in (r, r['baseline'], r['original_loop']):   # each figure is the median of its rounds
        assert len(path['round_ms']) == 3 and path['ms_per_iter'] == sorted(path['round_ms'])[1]


def test_bench_switches_times_each_switch_off_alone_in_the_same_rounds(tiny, tmp_path, fake_cpu):
    cfg, _ = tiny
    fake_cpu('avx2')      # auto: fused Adam on, bf16 autocast off (the kernels stay this machine's)
    rc = main.main(['--mode', 'bench', '--dataset', 'synthetic', '--synthetic_dir', cfg.synthetic_dir,
                    '--outputs_dir', str(tmp_path), '--bench_iters', '2', '--bench_warmup', '1',
                    '--bench_infer_repeats', '1', '--test_batch_size', '4', '--bench_switches', '--compile', 'false',
                    '--channels_last', 'true', '--explicit_gp', 'true', '--small_conv_matmul', 'false'] + TINY)
    assert rc == 0
    r = json.loads(next((tmp_path / 'results').glob('bench*.json')).read_text())
    # the switches on in this run, each turned off alone (compile and small_conv_matmul were off already)
    assert r['cpu_kind'] == 'avx2' and r['fused_adam'] == 'fused'
    assert set(r['without']) == {'channels_last', 'explicit_gp', 'data_cache', 'fused_adam'}
    for w in r['without'].values():
        assert len(w['round_ms']) == 3 and w['change'] == pytest.approx(w['ms_per_iter'] / r['ms_per_iter'] - 1)


def test_the_warm_up_runs_every_graph_twice_and_the_window_is_whole_cycles():
    assert bench.cadence(5, 30, 5) == (10, 30)     # two generator steps (iterations 4 and 9) before timing
    assert bench.cadence(5, 3, 5) == (10, 5)
    assert bench.cadence(5, 30, 1) == (5, 30)      # n_critic 1: every iteration has both steps
    assert bench.cadence(0, 7, 2) == (4, 8)
    assert bench.cadence(5, 30, 5, rounds=3) == (10, 30)   # three rounds of two cycles
    assert bench.cadence(5, 30, 5, rounds=4) == (10, 40)   # rounds of whole cycles: 4 x 10
    assert bench.cadence(5, 30, 1, rounds=4) == (5, 32)


def test_compile_auto_rule_and_the_compiled_generator(tiny, fake_cpu, monkeypatch):
    cfg, train_set = tiny
    cpu = torch.device('cpu')
    fake_cpu('avx512')                                  # a kind where compiling was measured to help
    for has_cxx in (True, False):                       # inductor's CPU backend needs a C++ compiler
        monkeypatch.setattr(runtime.shutil, 'which', lambda name, found=has_cxx: '/usr/bin/' + name if found else None)
        for num_iters, expected in ((10, False), (runtime.COMPILE_MIN_ITERS_CPU, has_cxx)):
            run = copy.copy(cfg)
            run.compile, run.num_iters = 'auto', num_iters
            assert runtime.compile_on(run, cpu) is expected
        run.num_iters, run.planned_iters = 10, runtime.COMPILE_MIN_ITERS_CPU   # bench: the length of the run it stands for
        assert runtime.compile_on(run, cpu) is has_cxx
        run.train_minutes = 5.0                         # a run of minutes: not compiled
        assert runtime.compile_on(run, cpu) is False
    monkeypatch.undo()
    # the compiled generator computes the same function and the same gradients (fp32)
    run = bench.plain_config(cfg)
    run.compile = 'true'
    s = Solver(run, train_set)
    assert s.G_train is not s.G
    x, aus = next(s.batches(0))
    results = []
    for net in (s.G, s.G_train):
        s.G.zero_grad()
        y, attn, _ = net(x, aus.flip(0))
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), attn.detach(), [p.grad.clone() for p in s.G.parameters()]))
    (y0, a0, g0), (y1, a1, g1) = results
    assert torch.allclose(y0, y1, atol=1e-5) and torch.allclose(a0, a1, atol=1e-5)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * a.abs().max().item())


def test_compiled_kernels_are_cached_apart_by_the_kernels_vector_width(fake_cpu, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', 'unset')      # so that the test ends with the value it found
    monkeypatch.delenv('TORCHINDUCTOR_CACHE_DIR')
    fake_cpu('other')
    assert runtime.keep_compiled_kernels_apart() == default_cache_dir() + '_default'
    assert os.environ['TORCHINDUCTOR_CACHE_DIR'] == default_cache_dir() + '_default'
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', '/somewhere/chosen')      # the user's choice stands
    fake_cpu('avx512')
    assert runtime.keep_compiled_kernels_apart() == '/somewhere/chosen'
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', default_cache_dir())      # as importing inductor sets it
    assert runtime.keep_compiled_kernels_apart() == default_cache_dir() + '_avx512'


@pytest.mark.parametrize('kind, expected', [('amx', torch.bfloat16), ('avx512_bf16', torch.bfloat16),
                                            ('avx512', None), ('avx2', None), ('other', None)])
def test_amp_auto_follows_the_cpus_bf16_instructions(fake_cpu, kind, expected):
    fake_cpu(kind)
    cpu = torch.device('cpu')
    assert runtime.resolve_amp('auto', cpu) == expected
    assert runtime.resolve_amp('off', cpu) is None and runtime.resolve_amp('bf16', cpu) == torch.bfloat16


@pytest.mark.parametrize('flags, capability, kind', [
    ('fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile', 'AVX512', 'amx'),
    ('fpu sse2 avx2 fma avx512f avx512_bf16', 'AVX512', 'avx512_bf16'),
    ('fpu sse2 avx2 fma avx512f avx512bw avx512_vnni', 'AVX512', 'avx512'),
    ('fpu sse2 avx2 fma', 'AVX2', 'avx2'),
    ('fpu sse2 avx2 fma avx512f', 'AVX2', 'avx2'),         # ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU
    ('fpu sse2 avx', 'DEFAULT', 'other'),
    ('fp asimd evtstrm sve', 'SVE256', 'other'),           # an Arm server
    ('', 'DEFAULT', 'other')])                             # no /proc/cpuinfo (macOS)
def test_cpu_kind_from_the_flags_and_the_kernels_vector_width(flags, capability, kind):
    assert runtime.cpu_kind(set(flags.split()), capability) == kind


def test_the_rule_table_in_the_docs_is_the_rule_in_the_code():
    """docs/benchmarks.md's table of where `auto` turns each switch on, against runtime.CPU_SWITCH_KINDS."""
    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs',
                             'benchmarks.md'), encoding='utf-8').read()
    lines = text[text.index('| `auto` turns on |'):].splitlines()
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    kinds = {'AMX': 'amx', 'AVX-512 BF16': 'avx512_bf16', 'AVX-512 (fp32)': 'avx512', 'AVX2 (fp32)': 'avx2',
             'other CPUs': 'other'}
    rows = {}
    for line in lines[2:]:
        if not line.startswith('|'):
            break
        cells = [c.strip() for c in line.strip('|').split('|')]
        switch = cells[0].split('`')[1].removeprefix('--')
        rows[switch] = {kinds[h] for h, c in zip(header[1:], cells[1:]) if h in kinds and c == 'yes'}
    assert rows == runtime.CPU_SWITCH_KINDS


def fused_adam_on(cfg, device):
    return runtime.adam_kind(cfg, device) == 'fused'


def test_auto_switches_stay_off_on_a_cpu_kind_where_they_were_not_measured(fake_cpu, monkeypatch, tiny):
    """An Arm CPU (kind 'other'): the plain path under auto; each switch can still be asked for."""
    cfg, train_set = copy.copy(tiny[0]), tiny[1]
    cfg.compile = 'auto'
    monkeypatch.setattr(runtime.shutil, 'which', lambda name: '/usr/bin/' + name)    # a C++ compiler
    fake_cpu('other')
    cpu = torch.device('cpu')
    s = Solver(cfg, train_set)
    assert s.amp_dtype is None and s.memory_format == torch.contiguous_format
    assert s.d_optim.defaults['foreach'] and not s.d_optim.defaults.get('fused')
    assert not any(f(cfg, cpu) for f in (runtime.explicit_gp_on, runtime.small_conv_matmul_on,
                                         fused_adam_on, runtime.channels_last_on))
    cfg.num_iters = runtime.COMPILE_MIN_ITERS_CPU
    assert not runtime.compile_on(cfg, cpu)
    for name in ('explicit_gp', 'small_conv_matmul', 'fused_adam', 'channels_last'):
        setattr(cfg, name, 'true')
    assert all(f(cfg, cpu) for f in (runtime.explicit_gp_on, runtime.small_conv_matmul_on,
                                     fused_adam_on, runtime.channels_last_on))
    assert Solver(cfg, train_set).d_optim.defaults.get('fused')
    for name in ('explicit_gp', 'small_conv_matmul', 'fused_adam', 'channels_last', 'compile'):
        setattr(cfg, name, 'auto')
    switches = {'explicit_gp': runtime.explicit_gp_on, 'small_conv_matmul': runtime.small_conv_matmul_on,
                'fused_adam': fused_adam_on, 'channels_last': runtime.channels_last_on}
    measured = {'amx': {'channels_last', 'small_conv_matmul', 'explicit_gp', 'fused_adam', 'compile', 'amp'},
                'avx512_bf16': {'amp'}, 'avx512': {'channels_last', 'small_conv_matmul', 'explicit_gp', 'compile'},
                'avx2': {'channels_last', 'explicit_gp', 'fused_adam'}, 'other': set()}
    for kind in runtime.CPU_KINDS:
        fake_cpu(kind)
        on = {name for name, f in switches.items() if f(cfg, cpu)}
        on |= {'compile'} if runtime.compile_on(cfg, cpu) else set()
        on |= {'amp'} if runtime.resolve_amp('auto', cpu) else set()
        assert on == measured[kind], kind           # what docs/benchmarks.md's tables measured, kind by kind


def test_a_training_step_keeps_its_figures_on_the_device(tiny):
    """A step's record holds 0-dim tensors, which the loop sums on the device and reads at log steps."""
    cfg, train_set = tiny
    s = Solver(cfg, train_set)
    x, aus = next(s.batches(0))
    record = s.train_step(1, x, aus)      # iteration 1: critic and generator steps (n_critic 2)
    assert {'D/loss', 'D/au', 'G/loss', 'G/au', 'G/attn_mean', 'skipped/D', 'skipped/G'} <= set(record)
    assert all(torch.is_tensor(v) and v.shape == () and v.dtype == torch.float32 for v in record.values())
    assert float(record['skipped/D']) == 0.0 and float(record['skipped/G']) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_training_steps_make_no_host_device_sync_on_a_gpu(tiny):
    """Loading, both steps, the non-finite check and the loop's bookkeeping queue work without
    waiting for the device (torch raises on any synchronising call in this mode)."""
    cfg, train_set = tiny
    gpu = copy.copy(cfg)
    gpu.device = 'cuda'
    s = Solver(gpu, train_set)
    window, batches = records.RecordWindow(), s.batches(0)
    for it in range(2):      # warm-up: cuDNN's algorithm search, the optimisers' first steps
        s.track_skips(s.train_step(it, *next(batches)))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for it in range(2, 4):
            record = s.train_step(it, *next(batches))
            window.add(record)
            s.track_skips(record)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert window.means()['skipped/D'] == 0.0
