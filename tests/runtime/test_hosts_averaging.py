"""Elastic averaging across namespace hosts (runtime.averaging over runtime.hosts): synchronous EASGD on
2 hosts x 1 worker and asynchronous EASGD on 2 hosts x 2 ranks (a center server on host 0) converge; when
host 1 is lost mid-run (every process killed, or its link cut), the asynchronous run goes on: the server
names both lost workers and host 0's worker finishes, its center still improving."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from averaging_cases import held_out_loss, model, train

from runtime import init_from_env
from runtime.averaging import EASGD, AsyncEASGD, AsyncLayout, CenterServer
from runtime.hosts import spawn_on_hosts

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TAU = 4
STEPS = 80
DIES_AFTER = 8  # host 1's workers' local steps before the host is killed: two exchanges
# Host 0: the server (rank 0) and a worker (rank 1); host 1: workers 2 and 3.
LAYOUT = AsyncLayout(workers=(1, 2, 3), servers=(0,))


def sync_easgd(steps: int) -> dict:
    """A worker of synchronous EASGD: the held-out loss of the initial model and of the center at the end."""
    init_from_env(timeout_s=60)
    net = model(0)
    strategy = EASGD(net, torch.optim.SGD(net.parameters(), lr=0.1), tau=TAU)
    train(strategy, dist.get_rank(), steps)
    strategy.finish()
    return {"before": held_out_loss(model(0)), "after": held_out_loss(model(0), strategy.center)}


def async_easgd(steps: int, marker: str = "", fault: str = "", timeout_s: float = 60) -> dict:
    """A rank of asynchronous EASGD in :data:`LAYOUT`, waits timing out after ``timeout_s``. With a
    ``marker`` path, host 1's workers write it after :data:`DIES_AFTER` steps, then wait there for the test
    to kill their host (``fault="kill"``) or to cut their link (``"cut"``), and train on."""
    init_from_env(timeout_s=timeout_s)
    rank = dist.get_rank()
    net = model(0)
    if rank in LAYOUT.servers:
        server = CenterServer(LAYOUT, sum(p.numel() for p in net.parameters()))
        server.serve()
        return {"lost": {str(w): why for w, why in server.lost.items()}}
    strategy = AsyncEASGD(net, torch.optim.SGD(net.parameters(), lr=0.1), LAYOUT, tau=TAU)
    if marker and rank in (2, 3):
        train(strategy, rank, DIES_AFTER)
        Path(f"{marker}-{rank}").touch()
        if fault == "kill":
            time.sleep(600)
        while not Path(f"{marker}-cut").exists():  # the test is cutting the link
            time.sleep(0.05)
        train(strategy, rank, steps - DIES_AFTER)  # until the cut link's waits time out
        strategy.finish()
        return {}
    train(strategy, rank, DIES_AFTER)
    midway = held_out_loss(model(0), strategy.peek_center())
    train(strategy, rank, steps - DIES_AFTER)
    at_end = held_out_loss(model(0), strategy.peek_center())
    strategy.finish()
    return {"before": held_out_loss(model(0)), "midway": midway, "after": at_end}


def test_synchronous_easgd_across_two_hosts_converges(make_hosts):
    hosts = make_hosts(2, bandwidth=100e6 / 8)
    outcomes = spawn_on_hosts(hosts, sync_easgd, (STEPS,), timeout_s=180)
    for o in outcomes:
        assert o.ok, (o.rank, o.error)
        assert o.result["after"] < 0.2 * o.result["before"]
    assert outcomes[0].result == outcomes[1].result  # one center, the same on both hosts


def test_asynchronous_easgd_across_two_hosts_converges(make_hosts):
    hosts = make_hosts(2, bandwidth=100e6 / 8, workers=2)
    outcomes = spawn_on_hosts(hosts, async_easgd, (STEPS,), nproc_per_host=2, timeout_s=180)
    for o in outcomes:
        assert o.ok, (o.rank, o.error)
    assert outcomes[0].result["lost"] == {}
    for worker in outcomes[1:]:
        assert worker.result["after"] < 0.2 * worker.result["before"]


@pytest.mark.parametrize("fault", ["kill", "cut"])
def test_asynchronous_easgd_goes_on_when_a_host_is_lost(make_hosts, tmp_path, fault):
    """Host 1 is lost with its two workers: its processes killed (the server sees the connections close)
    or its link cut (the server hears nothing for the timeout). The server names both, host 0's worker
    trains on and the center keeps improving."""
    hosts = make_hosts(2, bandwidth=100e6 / 8, workers=2)
    marker = str(tmp_path / "host1-reached")
    outcomes: list = []
    call = (STEPS, marker, fault, 8.0)
    run = threading.Thread(target=lambda: outcomes.extend(spawn_on_hosts(hosts, async_easgd, call, nproc_per_host=2, timeout_s=180)))
    run.start()
    deadline = time.monotonic() + 150
    while not all(Path(f"{marker}-{rank}").exists() for rank in (2, 3)):
        assert run.is_alive() and time.monotonic() < deadline, "host 1's workers never reached the point where their host is lost"
        time.sleep(0.1)
    if fault == "kill":
        assert hosts.kill(hosts[1])  # torchrun and both ranks of host 1
    else:
        hosts.set_link(hosts[1], up=False)
        Path(f"{marker}-cut").touch()
    run.join(170)
    assert not run.is_alive()
    server, worker = outcomes[0], outcomes[1]
    assert server.ok and worker.ok, (server.error, worker.error)
    assert set(server.result["lost"]) == {"2", "3"}, server.result  # the server names both workers of the lost host
    assert worker.result["after"] < 0.5 * worker.result["midway"]  # host 0's worker went on improving the center
    assert not outcomes[2].ok and not outcomes[3].ok
