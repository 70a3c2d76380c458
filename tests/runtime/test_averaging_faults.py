"""Asynchronous EASGD under faults: a worker that dies stops nobody (the server names it, the others
finish, the center's held-out loss keeps falling); a server that dies is an error naming it on the
workers, within the timeout, never a hang."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
import torch.distributed as dist

from graphc.ir.errors import RankFailure
from runtime import init_from_env
from runtime.averaging import AsyncEASGD, AsyncLayout, CenterServer
from runtime.launch import spawn

from averaging_cases import held_out_loss, model, train

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TAU = 4
DIES_AFTER = 8  # local steps: two exchanges
STEPS = 80


def a_worker_dies() -> dict:
    init_from_env(timeout_s=30)
    rank = dist.get_rank()
    layout = AsyncLayout.servers_last(dist.get_world_size(), 1)
    net = model(0)
    if rank in layout.servers:
        server = CenterServer(layout, sum(p.numel() for p in net.parameters()))
        server.serve()
        return {"lost": {str(w): why for w, why in server.lost.items()}, "arrivals": {str(w): n for w, n in server.arrivals.items()}}
    strategy = AsyncEASGD(net, torch.optim.SGD(net.parameters(), lr=0.1), layout, tau=TAU)
    train(strategy, rank, DIES_AFTER)
    if rank == layout.workers[-1]:
        os._exit(1)
    at_death = held_out_loss(model(0), strategy.peek_center())
    train(strategy, rank, STEPS - DIES_AFTER)
    at_end = held_out_loss(model(0), strategy.peek_center())
    strategy.finish()
    return {"at_death": at_death, "at_end": at_end}


def test_a_dead_worker_is_named_by_the_server_and_the_others_finish_improving_the_center():
    outcomes = spawn(a_worker_dies, 4, timeout_s=120, grace_s=100)
    dead = outcomes[2]
    assert dead.exitcode == 1
    for survivor in (outcomes[0], outcomes[1], outcomes[3]):
        assert survivor.ok, (survivor.rank, survivor.error, survivor.traceback)
    server = outcomes[3].result
    assert list(server["lost"]) == ["2"] and "waiting for its next message" in server["lost"]["2"]
    assert server["arrivals"] == {"0": STEPS // TAU, "1": STEPS // TAU, "2": DIES_AFTER // TAU}
    for worker in (outcomes[0], outcomes[1]):
        assert worker.result["at_end"] < 0.5 * worker.result["at_death"]


GROUP_TIMEOUT_S = 30
START_S = 30  # starting three ranks on a busy 2-core CI machine, with room to spare


def a_server_dies() -> dict:
    init_from_env(timeout_s=GROUP_TIMEOUT_S)
    rank = dist.get_rank()
    layout = AsyncLayout.servers_last(dist.get_world_size(), 1)
    net = model(0)
    if rank in layout.servers:
        server = CenterServer(layout, sum(p.numel() for p in net.parameters()))
        threading.Thread(target=server.serve, daemon=True).start()
        time.sleep(1.0)
        os._exit(1)
    strategy = AsyncEASGD(net, torch.optim.SGD(net.parameters(), lr=0.1), layout, tau=TAU)
    for _ in range(10_000):  # far more than a second's worth: the server dies mid-run
        train(strategy, rank, 1)
        time.sleep(0.002)
    return {"finished": True}


def test_a_dead_server_is_an_error_naming_it_on_every_worker_within_the_timeout():
    began = time.monotonic()
    # spawn's grace outlasts the group's timeout, so a worker that sees the death only at the timeout
    # still reports it rather than being killed
    outcomes = spawn(a_server_dies, 3, timeout_s=150, grace_s=GROUP_TIMEOUT_S + 30)
    took = time.monotonic() - began
    assert outcomes[2].exitcode == 1
    for worker in outcomes[:2]:
        assert isinstance(worker.error, RankFailure), (worker.rank, worker.error, worker.traceback)
        assert worker.error.rank == 2 and "server rank 2" in str(worker.error)
    # never a hang: within the process group's timeout of the server's death (usually at once)
    assert took < START_S + GROUP_TIMEOUT_S, (took, [str(w.error) for w in outcomes[:2]])
