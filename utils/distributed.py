"""Data-parallel training with torch.distributed, launched by torchrun.

    torchrun --nproc_per_node 4 main.py --mode train ...            # one node, 4 GPUs
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 --rdzv_id JOB main.py ...   # two nodes

Every rank holds the whole model. The design, and why:
- Gradients are averaged explicitly after each backward (one all-reduce of a flat
  buffer) instead of DistributedDataParallel: the critic's gradient penalty needs a
  double backward, which DDP's reducer does not support, and one explicit reduce
  after the full backward is correct for any graph.
- The loss value travels in the same buffer, so every rank sees the same averaged
  loss and gradients and takes the same decision to step or to skip a non-finite step.
- `--batch_size` is per rank. Iteration `it` reads a global batch of
  batch_size x world_size images (one permutation per epoch, shared by all ranks) and
  rank r takes its rows r*B..(r+1)*B-1; targets, flips and interpolation weights are
  drawn for the global batch with a generator seeded by (seed, iteration) and sliced
  the same way. So ranks never duplicate each other's samples or targets, and for
  per-sample-mean losses a run on W ranks of batch B computes the same update as one
  process with batch W*B.
- Rank 0 alone writes logs, samples, checkpoints and runs the evaluation; checkpoints
  hold no rank-specific state, so a run resumes on any number of ranks.
- SIGINT/SIGTERM on any rank stops all ranks at the same iteration (a one-element
  all-reduce per iteration), after rank 0 has saved a checkpoint.
"""
import contextlib
import hashlib
import os

import torch
import torch.distributed as dist


class State:
    rank = 0
    world = 1
    local_rank = 0
    backend = None

    @property
    def active(self):
        return self.world > 1

    @property
    def is_main(self):
        return self.rank == 0


STATE = State()


def init(cfg):
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL with one GPU
    per rank (cuda:LOCAL_RANK) when CUDA is there and --device allows it, gloo on CPU.
    Sets cfg.device accordingly. A no-op for a plain `python main.py`."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1 or STATE.active:
        return STATE
    STATE.rank, STATE.world = int(os.environ['RANK']), world
    STATE.local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = torch.cuda.is_available() and cfg.device in ('auto', 'cuda') or cfg.device.startswith('cuda:')
    if use_cuda:
        torch.cuda.set_device(STATE.local_rank)
        cfg.device = f'cuda:{STATE.local_rank}'
    else:
        cfg.device = 'cpu'
    STATE.backend = 'nccl' if use_cuda else 'gloo'
    dist.init_process_group(STATE.backend)
    return STATE


def shutdown():
    if STATE.active and dist.is_initialized():
        dist.destroy_process_group()
    STATE.rank, STATE.world, STATE.local_rank, STATE.backend = 0, 1, 0, None


def who():
    """' (rank N)' for messages when several ranks run, else ''."""
    return f' (rank {os.environ.get("RANK", STATE.rank)})' if launched_by_torchrun() else ''


@contextlib.contextmanager
def local_main_first():
    """The body runs on each node's local rank 0 first, then on the other ranks (which then
    find the files it wrote: synthetic data, the image cache)."""
    if STATE.active and STATE.local_rank != 0:
        dist.barrier()
    yield
    if STATE.active and STATE.local_rank == 0:
        dist.barrier()


def launched_by_torchrun():
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def record_error(exc):
    """Under torchrun, hand a handled error's message to the launcher, which prints it as
    the root cause when it stops the other ranks."""
    if launched_by_torchrun() and os.environ.get('TORCHELASTIC_ERROR_FILE'):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler
        ErrorHandler().record_exception(exc)


def entry_point(main):
    """`main`, wrapped under torchrun so that an unhandled exception's traceback reaches
    the launcher's summary too."""
    if not launched_by_torchrun():
        return main
    from torch.distributed.elastic.multiprocessing.errors import record
    return record(main)


def barrier():
    if STATE.active:
        dist.barrier()


def rows(t):
    """This rank's rows of a tensor (or a dict of tensors) drawn for the global batch."""
    if isinstance(t, dict):
        return {k: rows(v) for k, v in t.items()}
    if not STATE.active:
        return t
    b = t.shape[0] // STATE.world
    return t[STATE.rank * b:(STATE.rank + 1) * b]


def average(loss, params):
    """Average the gradients of `params` and the value of `loss` over all ranks, in place.
    Returns the averaged loss. A parameter without a gradient on this rank counts as zero
    (another rank's part of the batch may have reached it)."""
    if not STATE.active:
        return loss.detach()
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss.detach().float().reshape(1)])
    dist.all_reduce(flat)
    flat /= STATE.world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
    return flat[-1]


def broadcast_modules(modules):
    """Rank 0's parameters and buffers to every rank (after building or restoring)."""
    if not STATE.active:
        return
    with torch.no_grad():
        for module in modules:
            for t in module.state_dict().values():
                if torch.is_tensor(t):
                    dist.broadcast(t, 0)


def any_rank(flag, now=True):
    """The largest of an integer flag over all ranks (a signal on one rank stops all).

    Under DDP the agreement is an all-reduce whose result the host must wait for, which
    drains the GPU's queue of work; callers that poll every iteration pass `now=False` on
    most of them, and every rank then reports 0 there (the same iterations on every rank,
    so they all stop at the same one)."""
    if not STATE.active:
        return flag
    if not now:
        return 0
    device = torch.device('cuda', torch.cuda.current_device()) if STATE.backend == 'nccl' else torch.device('cpu')
    t = torch.tensor([int(flag or 0)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def fingerprint(modules):
    """SHA-256 of the modules' weights on this rank, and the list over all ranks."""
    h = hashlib.sha256()
    for module in modules:
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    mine = h.hexdigest()
    if not STATE.active:
        return mine, [mine]
    everyone = [None] * STATE.world
    dist.all_gather_object(everyone, mine)
    return mine, everyone
