"""torch.distributed on the CPU (gloo, 2 processes, one spawn for the whole file): DDP and FSDP train
as one process does, and context parallelism over token slices equals the single-process result."""
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import attncc
from attncc.tools.compare import make_module, random_inputs
from attncc.runtime.distributed import context_parallel

WORLD = 2
DECAY = """attention learned_decay {
    feature phi = relu
    param t[H] = uniform(low=0.02, high=0.3)
    param g[H] = ones
    weight(i, j) = dot(phi(q[i]), phi(k[j])) * g[h] * exp(-t[h] * (i - j))
    mask(i, j) = j <= i
    normalize rows
}"""  # a learned decay and a learned per-head modulation
CP_CASES = [("examples/linear_elu.attn", None), ("examples/linear_elu_causal.attn", None),
            ("examples/retention.attn", None), ("examples/performer.attn", None), (DECAY, "linear_chunked"),
            ("examples/favor_softmax.attn", None)]  # FAVOR+ softmax with ALiBi: random features and a decay
TRAIN_SPECS = [("examples/alibi.attn", None), (DECAY, "linear_chunked")]


class Net(nn.Module):
    """A projection to q, k, v and one compiled attention: enough to train its tables and the projection."""

    def __init__(self, cls):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(16, 48, dtype=torch.float64)
        self.attn = make_module(cls, 2, 8, 8).double()

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.proj(x).view(B, N, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return self.attn(q, k, v).transpose(1, 2).reshape(B, N, 16)


def _train(net, x, y, steps=3):
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    return net


def _close(a, b, what, tol=1e-10):
    a, b = a.detach(), b.detach()
    error = float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
    assert error <= tol, f"{what}: error {error:.2e}"


def _check_data_parallel(rank, wrap):
    """Each rank trains on its half of the batch; the tables end as full-batch training leaves them."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 20, 16, generator=g, dtype=torch.float64), torch.randn(4, 20, 16, generator=g, dtype=torch.float64)
    for spec, lowering in TRAIN_SPECS:
        cls = attncc.compile(spec, lowering=lowering)
        want = _train(Net(cls), x, y)
        net = _train(wrap(Net(cls)), x[2 * rank:2 * rank + 2], y[2 * rank:2 * rank + 2])
        got = {n.removeprefix("module."): p for n, p in net.named_parameters()}
        for name, p in want.named_parameters():
            full = got[name].full_tensor() if hasattr(got[name], "full_tensor") else got[name]
            _close(full, p, f"{cls.SPEC_NAME} {name}")


def _check_context_parallel(rank):
    bounds = [0, 83, 150]  # uneven slices, each past one linear chunk
    lo, hi = bounds[rank], bounds[rank + 1]
    for spec, lowering in CP_CASES:
        cls = attncc.compile(spec, lowering=lowering)
        torch.manual_seed(0)  # tables start alike on every rank
        module = make_module(cls, 2, 8, 8).double().eval()
        q, k, v, _ = random_inputs(cls, 2, 2, 150, 150, 8, 8)
        w = torch.randn(2, 2, 150, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        full = [t.clone().requires_grad_() for t in (q, k, v)]
        out = module(*full)
        (out * w).sum().backward()
        tables = {n: p.grad.clone() for n, p in module.named_parameters()}
        module.zero_grad()
        local = [t[:, :, lo:hi].clone().requires_grad_() for t in (q, k, v)]
        mine = context_parallel(module, *local)
        _close(mine, out[:, :, lo:hi], f"{cls.SPEC_NAME} output")
        (mine * w[:, :, lo:hi]).sum().backward()
        for name, t, ref in zip("qkv", local, full):
            _close(t.grad, ref.grad[:, :, lo:hi], f"{cls.SPEC_NAME} d/d{name}")
        for name, p in module.named_parameters():  # each rank holds its slice's share of a table's gradient
            dist.all_reduce(p.grad)
            _close(p.grad, tables[name], f"{cls.SPEC_NAME} d/d{name}")


def _worker(rank, rendezvous, done):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        _check_context_parallel(rank)
        _check_data_parallel(rank, nn.parallel.DistributedDataParallel)
        _check_data_parallel(rank, fully_shard)
        dist.barrier()  # no rank tears gloo down while the other still has work in flight (it aborts)
        open(f"{done}{rank}", "w").close()
    finally:
        dist.destroy_process_group()


def test_ddp_fsdp_and_context_parallel(tmp_path):
    done = str(tmp_path / "checked")
    try:
        torch.multiprocessing.spawn(_worker, args=(str(tmp_path / "rendezvous"), done), nprocs=WORLD, join=True)
    except torch.multiprocessing.ProcessExitedException as exc:
        # gloo sometimes aborts (SIGABRT) in destroy_process_group's teardown race, after every check of
        # both ranks passed and was recorded; any other exit, or an abort before a rank recorded its
        # checks, is a failure
        finished = all((tmp_path / f"checked{r}").exists() for r in range(WORLD))
        if not (finished and exc.signal_name == "SIGABRT"):
            raise


@pytest.mark.parametrize("spec,message", [
    ("examples/causal.attn", "linear and linear_chunked"),
    ("attention per_n { feature phi = elu1\n weight(i, j) = dot(phi(q[i]), phi(k[j])) / N\n normalize none }",
     "reads the token count N"),
])
def test_context_parallel_refuses(spec, message):
    module = attncc.compile(spec)()
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(attncc.AttnccError, match=message):
        context_parallel(module, q, q, q)
