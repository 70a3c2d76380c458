"""Asynchronous parameter servers with bounded staleness (runtime.servers): one worker at staleness 0
is eager SGD (and Adam) exactly; two workers leave the servers' weights equal to the update equations
applied in the recorded arrival order, each worker's weights equal to the answer to its push s steps
back and its gradients computed on them; no worker runs more than s steps ahead (from its log); a
killed worker is named by the server while the other finishes; a dead server is named on the worker."""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import re
import threading
import time

import pytest
import torch
import torch.distributed as dist
from averaging_cases import batch, model
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from graphc.ir.errors import ConfigurationError, RankFailure
from placement import presets
from placement.plan import Plan, Stage
from placement.sync import ParameterServerSync
from runtime import init_from_env
from runtime.averaging import AsyncLayout
from runtime.launch import spawn
from runtime.servers import (
    AsyncServerWorker,
    AsyncShardServer,
    async_layout,
    train_async,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

LR = 0.05
OPTIMIZERS = {"sgd": lambda ps: torch.optim.SGD(ps, lr=LR), "adam": lambda ps: torch.optim.Adam(ps, lr=LR)}


def loss_of(net: torch.nn.Module, rank: int, step: int) -> torch.Tensor:
    x, y = batch(rank, step)
    return torch.nn.functional.mse_loss(net(x), y)


def roles(servers: int, kind: str = "sgd", fractions: tuple[float, ...] = ()) -> tuple[AsyncLayout, torch.nn.Module, AsyncShardServer | None]:
    """The last ``servers`` ranks serve (shares ``fractions``, else equal): the layout, this rank's model,
    and its server (None on a worker)."""
    layout = dataclasses.replace(AsyncLayout.servers_last(dist.get_world_size(), servers), fractions=fractions)
    net = model(0)
    if dist.get_rank() not in layout.servers:
        return layout, net, None
    return layout, net, AsyncShardServer(layout, sum(p.numel() for p in net.parameters()), OPTIMIZERS[kind])


def serve_or_work(servers: int, staleness: int, steps: int, kind: str, fractions: tuple[float, ...] = ()) -> dict:
    """One run on this rank: the last ``servers`` ranks serve (shares ``fractions``); a worker records,
    per step, the weights it computed on and the gradient it pushed."""
    layout, net, server = roles(servers, kind, fractions)
    if server is not None:
        start = server.weights.detach().clone()
        final = server.serve()
        return {"start": start, "final": final.clone(), "shard": [server.shard.start, server.shard.stop],
                "arrivals": [[a.worker, a.step] for a in server.arrivals], "lost": server.lost}  # fmt: skip
    rank, worker = dist.get_rank(), AsyncServerWorker(net, layout, staleness=staleness)
    weights, gradients = [], []
    for step in range(steps):
        net.zero_grad()
        loss_of(net, rank, step).backward()
        weights.append(parameters_to_vector(net.parameters()).detach().clone())
        gradients.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]).clone())
        worker.step()
    worker.finish()
    return {"weights": weights, "gradients": gradients, "final": parameters_to_vector(net.parameters()).detach(),
            "log": [[r.step, r.version] for r in worker.log]}  # fmt: skip


def one_worker_runs(steps: int, fractions: list[float]) -> dict:
    init_from_env(timeout_s=60)
    return {kind: serve_or_work(2, 0, steps, kind, tuple(fractions)) for kind in OPTIMIZERS}


@pytest.mark.parametrize("fractions", [(), (1.0, 3.0)])
def test_one_worker_at_staleness_0_is_eager_sgd_and_adam_exactly(fractions):
    steps = 4
    outcomes = spawn(one_worker_runs, 3, (steps, list(fractions)), timeout_s=120)  # worker 0, servers 1 and 2
    for o in outcomes:
        assert o.ok, (o.rank, o.error, o.traceback)
    for kind, make in OPTIMIZERS.items():
        net = model(0)
        opt = make(list(net.parameters()))
        for step in range(steps):
            opt.zero_grad()
            loss_of(net, 0, step).backward()
            opt.step()
        eager = parameters_to_vector(net.parameters()).detach()
        worker = outcomes[0].result[kind]
        assert torch.equal(worker["final"], eager), kind
        halves = [outcomes[r].result[kind] for r in (1, 2)]
        assert torch.equal(torch.cat([h["final"] for h in halves]), eager), kind
        cut = round(eager.numel() / 4) if fractions else eager.numel() // 2  # server 1 holds a quarter with shares 1 : 3
        assert [h["shard"] for h in halves] == [[0, cut], [cut, eager.numel()]]


def test_an_asynchronous_plans_servers_hold_shards_sized_to_their_links():
    # cpu1's link is three times as fast as cpu3's: it holds three quarters of the parameters, so each
    # server moves its shard in the same time (placement.sharding.shard_fractions).
    cluster = presets.local(workers=4)
    for link in cluster.links:
        link.bandwidth = 1e9 if link.a == "cpu3" or link.b == "cpu3" else 3e9
    plan = Plan(graph_name="g", graph_fingerprint="", cluster_name=cluster.name, objective="throughput", mode="training",
                assignment={"a": "cpu0"}, stages=[Stage(0, ["a"], ["cpu0", "cpu2"])],
                sync=ParameterServerSync(("cpu1", "cpu3"), staleness=1), cluster=cluster)  # fmt: skip
    layout = async_layout(plan)
    assert layout.workers == (0, 2) and layout.servers == (1, 3) and layout.fractions == pytest.approx((0.75, 0.25))
    assert layout.shards(1000) == [slice(0, 750), slice(750, 1000)]
    with pytest.raises(ConfigurationError, match="expected one positive share per server"):
        AsyncLayout((0,), (1, 2), (1.0,))
    with pytest.raises(ConfigurationError, match="expected one positive share per server"):
        AsyncLayout((0,), (1, 2), ("a", 1.0))


@pytest.mark.parametrize("seed", range(200))
def test_shards_tile_the_vector_for_any_shares(seed):
    rng = random.Random(seed)
    servers = rng.randint(1, 7)
    fractions = tuple(rng.choice([rng.random(), rng.random() * 1e-3, 1 / 3, 0.7, 0.15]) + 1e-9 for _ in range(servers))
    layout = AsyncLayout((0,), tuple(range(1, servers + 1)), fractions)
    for numel in (0, 1, servers, rng.randint(1, 10**6)):
        shards = layout.shards(numel)
        assert shards[0].start == 0 and shards[-1].stop == numel
        assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
        if numel >= servers:
            assert all(s.stop > s.start for s in shards)  # every server holds something
    with pytest.raises(ConfigurationError, match="expected one positive share per server"):
        AsyncLayout((0,), (1, 2), (1.0, 0.0))


def two_worker_run(staleness: int, steps: int) -> dict:
    init_from_env(timeout_s=60)
    return serve_or_work(2, staleness, steps, "sgd")


@pytest.mark.parametrize("staleness", [0, 2])
def test_two_workers_match_the_update_equations_in_the_recorded_arrival_order(staleness):
    steps = 6
    outcomes = spawn(two_worker_run, 4, (staleness, steps), timeout_s=120)  # workers 0, 1; servers 2, 3
    for o in outcomes:
        assert o.ok, (o.rank, o.error, o.traceback)
    workers = {r: outcomes[r].result for r in (0, 1)}
    for r, w in workers.items():
        # the bound, from the log: step t computed on the answers to the pushes 0 .. t - s - 1
        assert w["log"] == [[t, max(0, t - staleness)] for t in range(steps)]
        # every pushed gradient is the gradient of the worker's loss at the weights it held
        for t in range(steps):
            net = model(0)
            vector_to_parameters(w["weights"][t], net.parameters())
            loss_of(net, r, t).backward()
            assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in net.parameters()]), w["gradients"][t], atol=1e-7)
    for server in (outcomes[2].result, outcomes[3].result):
        lo, hi = server["shard"]
        assert sorted(map(tuple, server["arrivals"])) == sorted((r, t) for r in (0, 1) for t in range(steps))
        for r in (0, 1):  # each worker's pushes arrive in the order it sent them
            assert [t for w, t in server["arrivals"] if w == r] == list(range(steps))
        x = server["start"].clone()
        after: dict[tuple[int, int], torch.Tensor] = {}
        for r, t in server["arrivals"]:  # x_k = x_{k-1} - lr g_{a_k}, in arrival order
            x = x - LR * workers[r]["gradients"][t][lo:hi]
            after[(r, t)] = x
        assert torch.allclose(server["final"], x, atol=1e-6)
        for r, w in workers.items():
            for t in range(staleness + 1, steps):  # x^w_t is the answer to its push t - s - 1
                assert torch.allclose(w["weights"][t][lo:hi], after[(r, t - staleness - 1)], atol=1e-6)
            assert torch.allclose(w["final"][lo:hi], after[(r, steps - 1)], atol=1e-6)


STEPS, DIES_AFTER, STALENESS = 40, 5, 2


def a_worker_dies() -> dict:
    init_from_env(timeout_s=30)
    layout, net, server = roles(1)
    if server is not None:
        server.serve()
        return {"lost": {str(w): why for w, why in server.lost.items()}, "arrivals": [[a.worker, a.step] for a in server.arrivals]}
    rank, worker = dist.get_rank(), AsyncServerWorker(net, layout, staleness=STALENESS)
    losses = []
    for step in range(STEPS):
        if rank == 1 and step == DIES_AFTER:
            os._exit(1)
        net.zero_grad()
        loss = loss_of(net, rank, step)
        loss.backward()
        worker.step()
        losses.append(loss.item())
    worker.finish()
    return {"losses": losses}


def test_a_killed_worker_is_named_by_the_server_and_the_other_finishes():
    outcomes = spawn(a_worker_dies, 3, timeout_s=120, grace_s=100)
    assert outcomes[1].exitcode == 1
    for o in (outcomes[0], outcomes[2]):
        assert o.ok, (o.rank, o.error, o.traceback)
    server = outcomes[2].result
    assert list(server["lost"]) == ["1"]  # what it was doing depends on where the push was cut
    assert re.match(r"(waiting for its next push|receiving its gradient of step \d|answering its push of step \d)", server["lost"]["1"])
    assert [t for w, t in server["arrivals"] if w == 0] == list(range(STEPS))
    # its pushes up to the last answered (step DIES_AFTER - 1 - s) arrived; the s after it were in flight
    from_dead = [t for w, t in server["arrivals"] if w == 1]
    assert from_dead == list(range(len(from_dead))) and DIES_AFTER - STALENESS <= len(from_dead) <= DIES_AFTER
    losses = outcomes[0].result["losses"]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


GROUP_TIMEOUT_S, KILLED_AFTER = 60, 6  # the server dies once it has applied 6 gradients


def a_server_dies() -> None:
    init_from_env(timeout_s=GROUP_TIMEOUT_S)
    layout, net, server = roles(1)
    if server is not None:
        threading.Thread(target=server.serve, daemon=True).start()
        while len(server.arrivals) < KILLED_AFTER:
            time.sleep(0.001)
        os._exit(1)
    rank, worker = dist.get_rank(), AsyncServerWorker(net, layout, staleness=1)
    for step in itertools.count():  # until the server's death ends it
        net.zero_grad()
        loss_of(net, rank, step).backward()
        worker.step()


def test_a_dead_server_is_an_error_naming_it_on_the_workers_well_within_the_timeout():
    began = time.monotonic()
    outcomes = spawn(a_server_dies, 3, timeout_s=120, grace_s=60)
    assert time.monotonic() - began < 0.75 * GROUP_TIMEOUT_S  # gloo sees the connection close
    assert outcomes[2].exitcode == 1
    for worker in outcomes[:2]:
        assert isinstance(worker.error, RankFailure), (worker.rank, worker.error, worker.traceback)
        assert worker.error.rank == 2 and "server rank 2 failed while" in str(worker.error)


def entry_point_run(staleness: int, steps: int, layout: list) -> dict:
    init_from_env(timeout_s=60)
    x, y = batch(0, 0, size=32)
    run = train_async(model(0), torch.nn.functional.mse_loss, (x,), y, AsyncLayout(tuple(layout[0]), tuple(layout[1])),
                      optimizer=OPTIMIZERS["sgd"], staleness=staleness, steps=steps)  # fmt: skip
    return {"role": run.role, "losses": run.losses, "versions": [r.version for r in run.log], "arrivals": len(run.arrivals)}


def test_the_entry_point_of_a_data_parallel_plan_trains_on_each_workers_half_of_the_batch():
    plan = Plan(graph_name="g", graph_fingerprint="", cluster_name="c", objective="throughput", mode="training",
                assignment={"a": "cpu0"}, stages=[Stage(0, ["a"], ["cpu0", "cpu2"])],
                sync=ParameterServerSync(("cpu1",), staleness=1))  # fmt: skip
    layout = async_layout(plan)
    assert layout == AsyncLayout(workers=(0, 2), servers=(1,))  # ranks in natural order of device names
    steps = 12
    outcomes = spawn(entry_point_run, 3, (1, steps, [list(layout.workers), list(layout.servers)]), timeout_s=120)
    for o in outcomes:
        assert o.ok, (o.rank, o.error, o.traceback)
    assert outcomes[1].result["role"] == "server" and outcomes[1].result["arrivals"] == 2 * steps
    for r in (0, 2):
        run = outcomes[r].result
        assert run["versions"] == [max(0, t - 1) for t in range(steps)]
        assert run["losses"][-1] < 0.5 * run["losses"][0]


def test_async_layout_refuses_a_plan_that_is_not_pure_data_parallel():
    plan = Plan(graph_name="g", graph_fingerprint="", cluster_name="c", objective="throughput", mode="training",
                assignment={"a": "cpu0", "b": "cpu1"}, stages=[Stage(0, ["a"], ["cpu0"]), Stage(1, ["b"], ["cpu1"])],
                sync=ParameterServerSync(("cpu2",), staleness=1))  # fmt: skip
    with pytest.raises(ConfigurationError, match="pure data-parallel plan"):
        async_layout(plan)
