"""Every averaging strategy trains to completion on two and four CPU ranks (the held-out loss falls), and
a checkpointed run resumes exactly: ``k`` steps, save, load into fresh objects, ``k`` steps equals ``2 k``."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from graphc.ir.errors import MismatchError
from runtime import init_from_env
from runtime.averaging import EAMSGD, EASGD, AsyncEASGD, AsyncLayout, CenterServer, DiLoCo, LocalSGD, load_checkpoint, save_checkpoint
from runtime.launch import spawn

from averaging_cases import held_out_loss, model as _model, train

pytestmark = pytest.mark.distributed

KINDS = ("easgd", "eamsgd", "local", "diloco", "async")
RESUMABLE = ("easgd", "diloco", "local", "async")  # async with one worker: deterministic


def _strategy(kind: str, model: torch.nn.Module, layout: AsyncLayout):
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    if kind == "easgd":
        return EASGD(model, sgd, tau=4)
    if kind == "eamsgd":
        return EAMSGD(model, lr=0.1, tau=4)
    if kind == "local":
        return LocalSGD(model, sgd, period=4)
    if kind == "diloco":
        return DiLoCo(model, sgd, period=4)
    return AsyncEASGD(model, sgd, layout, tau=4, prefetch=2)


def _run(kind: str, layout: AsyncLayout, steps: int, seed: int = 0, resume: str | None = None, save: str | None = None) -> dict:
    """Train ``kind`` for ``steps`` on this rank (a worker or, for async, maybe a server); optionally load
    a checkpoint first and save one after. Returns the parameters, the center and the held-out losses."""
    rank = dist.get_rank()
    model = _model(seed)
    if kind == "async" and rank in layout.servers:
        server = CenterServer(layout, sum(p.numel() for p in model.parameters()))
        if resume:
            load_checkpoint(server, resume, rank)
        center = server.serve()
        if save:
            save_checkpoint(server, save, rank)
        return {"center": center.tolist()}
    strategy = _strategy(kind, model, layout)
    if resume:
        load_checkpoint(strategy, resume, rank)
    before = held_out_loss(_model(seed)) if kind != "async" else None
    train(strategy, rank, steps)
    center = strategy.peek_center() if kind == "async" else getattr(strategy, "center", None)
    strategy.finish()
    if save:
        save_checkpoint(strategy, save, rank)
    out = {"worker": strategy.flat().tolist(), "before": before, "traffic": strategy.traffic.sent}
    if center is not None:
        out["center"] = center.tolist()
    evaluated = strategy.flat() if center is None else center
    out["after"] = held_out_loss(_model(seed), evaluated)
    return out


def train_each(steps: int) -> dict:
    init_from_env(timeout_s=60)
    world = dist.get_world_size()
    layout = AsyncLayout.servers_last(world, world // 2)
    return {kind: _run(kind, layout, steps) for kind in KINDS}


def resume_each(k: int, directory: str) -> dict:
    init_from_env(timeout_s=60)
    layout = AsyncLayout.servers_last(dist.get_world_size(), 1)
    out = {}
    for kind in RESUMABLE:
        whole = _run(kind, layout, 2 * k)
        _run(kind, layout, k, save=f"{directory}/{kind}")
        resumed = _run(kind, layout, k, seed=1, resume=f"{directory}/{kind}")
        out[kind] = {"whole": whole, "resumed": resumed}
    net = _model(0)
    local = LocalSGD(net, torch.optim.SGD(net.parameters(), lr=0.1))
    try:
        load_checkpoint(local, f"{directory}/easgd", dist.get_rank())
    except MismatchError as exc:
        out["refused"] = str(exc)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_every_strategy_trains_to_completion_and_the_held_out_loss_falls(world):
    outcomes = spawn(train_each, world, (40,), timeout_s=120)
    for o in outcomes:
        assert o.ok, (o.rank, o.error, o.traceback)
    layout = AsyncLayout.servers_last(world, world // 2)
    for kind in KINDS:
        workers = [outcomes[r].result[kind] for r in (layout.workers if kind == "async" else range(world))]
        for got in workers:
            assert got["after"] < 0.1 * held_out_loss(_model(0)), (kind, got["after"])
            assert got["traffic"] > 0
        if kind in ("local", "diloco"):  # 40 steps = 10 rounds: the workers end equal
            assert all(torch.allclose(torch.tensor(w["worker"]), torch.tensor(workers[0]["worker"])) for w in workers)
        if kind in ("easgd", "eamsgd"):  # the center is computed identically on every worker
            assert all(w["center"] == workers[0]["center"] for w in workers)


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_run(tmp_path):
    outcomes = spawn(resume_each, 2, (8, str(tmp_path)), timeout_s=120)
    for o in outcomes:
        assert o.ok, (o.rank, o.error, o.traceback)
    for rank, o in enumerate(outcomes):
        for kind in RESUMABLE:
            got = o.result[kind]
            for key in ("worker", "center"):
                if key in got["whole"]:
                    assert torch.equal(torch.tensor(got["resumed"][key]), torch.tensor(got["whole"][key])), (rank, kind, key)
    assert "center" in outcomes[1].result["async"]["resumed"]  # the server's shard resumed too
    assert all("a checkpoint of 'EASGD' cannot resume a LocalSGD" in o.result["refused"] for o in outcomes)
