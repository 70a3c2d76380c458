"""One or two exchanges of each averaging strategy over real ranks (gloo), against the papers' update
equations computed by hand: synchronous EASGD, DiLoCo and local SGD on two workers, asynchronous EASGD
with one worker and one or two center shards. One spawn of three ranks runs them all."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from runtime import init_from_env
from runtime.averaging import EASGD, AsyncEASGD, AsyncLayout, CenterServer, DiLoCo, LocalSGD
from runtime.launch import spawn

pytestmark = pytest.mark.distributed

X0 = [1.0, 2.0, 3.0]  # rank 0's parameters: a = [1, 2], b = [3]; the strategies broadcast them
LR = 0.5


class Pair(torch.nn.Module):
    """Two parameters, so that the flat vector's layout is exercised."""

    def __init__(self, start: list[float]) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(start[:2]))
        self.b = torch.nn.Parameter(torch.tensor(start[2:]))


def _model(rank: int) -> Pair:
    return Pair(X0 if rank == 0 else [9.0, 9.0, 9.0])


def _step(strategy, rank: int) -> None:
    """A local step with the gradient g_r = (r + 1) [1, -1, 2]."""
    model = strategy.model
    model.a.grad = torch.tensor([1.0, -1.0]) * (rank + 1)
    model.b.grad = torch.tensor([2.0]) * (rank + 1)
    strategy.step()


def _flat(model: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()


def _regression(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rank + step)
    x = torch.randn(4, 3, generator=g)
    return x, x.sum(1, keepdim=True)


def exchanges() -> dict:
    init_from_env(timeout_s=60)
    rank = dist.get_rank()
    pair = dist.new_group([0, 1])
    out: dict = {}
    if rank in (0, 1):
        model = _model(rank)
        easgd = EASGD(model, torch.optim.SGD(model.parameters(), lr=LR), tau=1, alpha=0.3, group=pair)
        _step(easgd, rank)
        out["easgd"] = {"worker": _flat(model), "center": easgd.center.tolist(), "sent": easgd.traffic.sent}

        model = _model(rank)
        diloco = DiLoCo(model, torch.optim.SGD(model.parameters(), lr=LR), period=1, group=pair)
        _step(diloco, rank)
        _step(diloco, rank)
        out["diloco"] = _flat(model)

        torch.manual_seed(0)
        model, eager = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
        eager.load_state_dict(model.state_dict())
        local = LocalSGD(model, torch.optim.SGD(model.parameters(), lr=0.1), period=1, group=pair)
        full = torch.optim.SGD(eager.parameters(), lr=0.1)
        for step in range(3):
            model.zero_grad()
            x, y = _regression(rank, step)
            torch.nn.functional.mse_loss(model(x), y).backward()
            local.step()
            full.zero_grad()
            both = [_regression(r, step) for r in (0, 1)]
            (sum(torch.nn.functional.mse_loss(eager(x), y) for x, y in both) / 2).backward()
            full.step()
        out["local"] = {"replica": _flat(model), "eager": _flat(eager)}
    for servers in ((1,), (1, 2)):
        layout = AsyncLayout((0,), servers)
        if rank == 0:
            model = _model(rank)
            worker = AsyncEASGD(model, torch.optim.SGD(model.parameters(), lr=LR), layout, tau=2, alpha=0.25, prefetch=1)
            for _ in range(4):
                _step(worker, rank)
            peeked = worker.peek_center().tolist()
            worker.finish()
            out[f"async{len(servers)}"] = {"worker": _flat(model), "peeked": peeked, "sent": worker.traffic.sent, "received": worker.traffic.received}
        elif rank in servers:
            out[f"async{len(servers)}"] = CenterServer(layout, 3, alpha=0.25).serve().tolist()
    return out


@pytest.fixture(scope="module")
def results() -> list[dict]:
    outcomes = spawn(exchanges, 3, timeout_s=120)
    for o in outcomes:
        assert o.ok, (o.rank, o.error, o.traceback)
    return [o.result for o in outcomes]


def _close(got: list[float], expected: list[float]) -> bool:
    return torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-6)


def test_one_synchronous_easgd_exchange_is_the_papers_equations(results):
    # x_r = x0 - 0.5 g_r: [0.5, 2.5, 2] and [0, 3, 1]; mean m = [0.25, 2.75, 1.5]; center x~ = x0
    # x_r <- x_r - 0.3 (x_r - x~);  x~ <- x~ + 0.6 (m - x~)  (beta = N alpha = 0.6)
    expected_workers = [[0.5 + 0.15, 2.5 - 0.15, 2.0 + 0.3], [0.0 + 0.3, 3.0 - 0.3, 1.0 + 0.6]]
    expected_center = [1.0 - 0.45, 2.0 + 0.45, 3.0 - 0.9]
    for rank in (0, 1):
        assert _close(results[rank]["easgd"]["worker"], expected_workers[rank])
        assert _close(results[rank]["easgd"]["center"], expected_center)
        assert results[rank]["easgd"]["sent"] == 2 * (2 - 1) / 2 * 12  # a ring all-reduce of 3 floats


def test_two_diloco_rounds_are_the_outer_nesterov_step_on_the_averaged_delta(results):
    # every round: delta d = x_start - mean_r (x_start - 0.5 g_r) = 0.5 mean(g) = [0.75, -0.75, 1.5]
    # round 1: b = d,          x_start -= 0.7 (d + 0.9 d)     = 1.33 d
    # round 2: b = 0.9 d + d,  x_start -= 0.7 (d + 0.9 * 1.9 d) = 1.897 d
    d = [0.75, -0.75, 1.5]
    expected = [x - (1.33 + 1.897) * di for x, di in zip(X0, d)]
    for rank in (0, 1):
        assert _close(results[rank]["diloco"], expected)


def test_local_sgd_every_step_with_plain_sgd_is_synchronous_data_parallel_sgd(results):
    for rank in (0, 1):
        assert _close(results[rank]["local"]["replica"], results[rank]["local"]["eager"])


@pytest.mark.parametrize("servers", [1, 2])
def test_two_async_easgd_exchanges_with_prefetch_are_the_papers_equations(results, servers):
    # one worker, tau = 2, prefetch 1, alpha = 0.25, g = [1, -1, 2], lr 0.5; the center starts at x0
    # exchange 1 (center fetched after step 1: x0): x2 = [0, 3, 1]
    #   server x~ = x0 + 0.25 (x2 - x0) = [0.75, 2.25, 2.5];  worker x = x2 - 0.25 (x2 - x0) = [0.25, 2.75, 1.5]
    # exchange 2 (fetched after step 3: [0.75, 2.25, 2.5]): x4 = [-0.75, 3.75, -0.5]
    #   server x~ = [0.75 - 0.375, 2.25 + 0.375, 2.5 - 0.75];  worker x = x4 - 0.25 (x4 - [0.75, 2.25, 2.5])
    center = [0.375, 2.625, 1.75]
    worker = [-0.75 + 0.375, 3.75 - 0.375, -0.5 + 0.75]
    got = results[0][f"async{servers}"]
    assert _close(got["worker"], worker)
    assert _close(got["peeked"], center)
    shards = [results[r][f"async{servers}"] for r in range(1, servers + 1)]
    assert _close([v for shard in shards for v in shard], center)
    # per exchange: a FETCH and a PUSH header (8 bytes) per server and the 12 bytes of parameters each way
    assert got["sent"] == 2 * (16 * servers + 12) and got["received"] == 2 * 12
