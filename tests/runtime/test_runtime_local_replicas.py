"""The local executor's differentiable call on replicated programs: the caller's backward sums the replicas.

A tiny MLP on a batch of 12, replicated data-parallel (2 and 3 replicas), as a hybrid (2 replicas x a
2-stage pipeline) and under a parameter server, is trained by the caller (``loss.backward()`` and an
optimizer over :meth:`LocalExecutor.parameters`) for three steps of SGD with momentum and of Adam: the
losses, outputs, gradients and parameters must be eager's, since every replica runs its microbatches
on its stage device's parameters and autograd sums the replicas' gradients into them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphc
from placement import presets
from placement.sync import sync_from_dict
from runtime import LocalExecutor, PartitionedProgram, contiguous_plan, partition
from runtime.testing import eager_run

BATCH = 12
RING = {"kind": "allreduce", "algorithm": "ring"}
SERVER = {"kind": "parameter-server", "servers": ["cpu2"]}
CASES = {  # name -> (stages, microbatches, sync)
    "2 replicas": ([["cpu0", "cpu1"]], 2, RING),
    "3 replicas, 6 microbatches": ([["cpu0", "cpu1", "cpu2"]], 6, RING),
    "2 replicas x 2 stages": ([["cpu0", "cpu1"], ["cpu2", "cpu3"]], 4, RING),
    "2 replicas, 1 server": ([["cpu0", "cpu1"]], 2, SERVER),
}
OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
}


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 8, generator=generator), torch.randint(0, 4, (BATCH,), generator=generator)


def program(case: str) -> PartitionedProgram:
    stages, m, sync = CASES[case]
    x = torch.zeros(BATCH, 8)
    full = graphc.trace(mlp(), (x,), name="mlp", granularity="op")
    micro = graphc.trace(mlp(), (x[: BATCH // m],), name="mlp", granularity="op")
    plan = contiguous_plan(full.graph, stages, microbatches=m)
    plan.sync = sync_from_dict(sync)
    plan.cluster = presets.local(workers=4)
    return partition(micro.graph_module, plan, full.graph)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("case", list(CASES))
def test_the_callers_backward_sums_the_replicas_like_eager(case, name):
    parts = program(case)
    assert parts.replicas
    x, y = batch()
    executor = LocalExecutor(parts)
    placed = eager_run(executor, executor.named_parameters(), x, y, F.cross_entropy, OPTIMIZERS[name], steps=3)
    reference = mlp()
    eager = eager_run(reference, reference.named_parameters(), x, y, F.cross_entropy, OPTIMIZERS[name], steps=3)
    torch.testing.assert_close(placed.losses, eager.losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(placed.outputs, eager.outputs, rtol=1e-5, atol=1e-6)
    for kind in ("grads", "params"):
        got, want = getattr(placed, kind), getattr(eager, kind)
        assert set(got) == set(want)
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6, msg=lambda m, n=n, k=kind: f"{k} {n}: {m}")


def test_replicas_keep_their_own_copies_which_get_no_gradient():
    parts = program("2 replicas")
    executor = LocalExecutor(parts)
    own = {n: p.detach().clone() for n, p in parts.programs["cpu1"].parameters.items()}
    x, y = batch()
    F.cross_entropy(executor(x), y).backward()
    for n, p in parts.programs["cpu1"].parameters.items():
        assert p.grad is None
        torch.testing.assert_close(p.detach(), own[n], rtol=0, atol=0)
    assert all(p.grad is not None for p in executor.parameters())


def test_forward_after_the_callers_update_runs_every_replica_on_the_updated_parameters():
    parts = program("3 replicas, 6 microbatches")
    executor = LocalExecutor(parts)
    x, y = batch()
    F.cross_entropy(executor(x), y).backward()
    with torch.no_grad():
        for p in executor.parameters():
            p -= 0.5 * p.grad
    reference = mlp()
    updated = dict(executor.named_parameters())
    with torch.no_grad():
        for n, p in reference.named_parameters():
            p.copy_(updated[n])
    torch.testing.assert_close(executor.forward(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["2 replicas x 2 stages", "2 replicas, 1 server"])
def test_a_step_after_the_callers_update_starts_from_it_on_every_replica_and_server(case):
    """A step, a caller's SGD step through the call (which updates the stage devices' parameters only),
    a step: eager's three SGD steps."""
    x, y = batch()
    sgd = lambda ps: torch.optim.SGD(ps, lr=0.1)  # stateless: eager's fresh optimizer per step is the same
    executor = LocalExecutor(program(case), loss_fn=F.cross_entropy, optimizer=sgd)
    executor.step(x, y)  # makes the servers' copies, which the caller's update leaves behind
    eager_run(executor, executor.named_parameters(), x, y, F.cross_entropy, sgd)
    last = executor.step(x, y)
    reference = mlp()
    for _ in range(3):
        eager = eager_run(reference, reference.named_parameters(), x, y, F.cross_entropy, sgd)
    assert last.loss == pytest.approx(eager.losses[0], rel=1e-5)
    for n, p in executor.named_parameters():
        torch.testing.assert_close(p.detach(), eager.params[n], rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_replica_on_another_torch_device_trains_through_a_differentiable_copy():
    """The owner on the CPU, its replica on the GPU: the replica's parameters are copies the caller's
    backward sums back, and its outputs are gathered on the CPU."""
    x, y = batch()
    executor = LocalExecutor(program("2 replicas"), devices={"cpu0": "cpu", "cpu1": "cuda:0"})
    placed = eager_run(executor, executor.named_parameters(), x, y, F.cross_entropy, OPTIMIZERS["adam"], steps=3)
    reference = mlp()
    eager = eager_run(reference, reference.named_parameters(), x, y, F.cross_entropy, OPTIMIZERS["adam"], steps=3)
    assert placed.outputs.device.type == "cpu"
    torch.testing.assert_close(placed.losses, eager.losses, rtol=1e-4, atol=1e-5)
    for n, p in placed.params.items():
        torch.testing.assert_close(p, eager.params[n], rtol=1e-4, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")
