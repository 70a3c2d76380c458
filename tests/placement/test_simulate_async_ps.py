"""The steady-state step of asynchronous parameter servers (placement.simulate.async_server_step),
computed by hand on a star of 1 GB/s links: T = max(C, (C + R) / (s + 1), O); the step simulator and
the schedule generator refuse staleness > 0 naming what runs and prices it."""

from __future__ import annotations

import pytest

from graphc.ir.graph import Graph, NodeData
from placement import Cluster, Device, Link, Switch, simulate
from placement.errors import ConfigurationError, ScheduleError
from placement.plan import Plan, Stage
from placement.schedules import make_schedule
from placement.simulate import async_server_step
from placement.sync import ParameterServerSync

MB = 1e6  # 1 ms on a 1 GB/s link


def star(server_category: str) -> Cluster:
    """GPUs d0, d1 and servers s0, s1 (5 GB/s memory) on their own 1 GB/s full-duplex links to one switch."""
    devices = [Device(f"d{i}", "X", "gpu", "h", {"float32": 1e12}, 1e11, 1e12) for i in range(2)]
    devices += [Device(f"s{i}", server_category, server_category, "h", {"float32": 1e11}, 5e9, 1e12) for i in range(2)]
    return Cluster("star", devices, [Link(d.name, "sw", "pcie", 1e9) for d in devices], [Switch("sw", "pcie_switch", "h")])


# 4 MB over 2 servers: 2 MB shards. Push: d0 sends 2 MB to s0 and 2 MB to s1 over its own uplink (4 MB,
# 4 ms); s0 receives 2 MB from d0 and from d1 (4 MB, 4 ms): 4 ms. Pull the same way back: 4 ms. One
# update: (3 + 2) x 2 MB / 5 GB/s = 2 ms; two workers' updates per step: 4 ms. R = 4 + 4 + 4 = 12 ms.
WORKERS, SERVERS, P, C = ("d0", "d1"), ("s0", "s1"), 4 * MB, 5.0


@pytest.mark.parametrize(
    ("staleness", "step", "bound"),
    [
        (0, 5 + 12, "round trip"),  # C + R
        (1, (5 + 12) / 2, "round trip"),
        (2, (5 + 12) / 3, "round trip"),
        (3, 5, "compute"),  # (5 + 12) / 4 = 4.25 < C: the round trip hides behind 3 steps of compute
    ],
)
def test_staleness_hides_the_round_trip_behind_compute(staleness, step, bound) -> None:
    r = async_server_step(star("gpu"), WORKERS, SERVERS, P, C, staleness)
    assert (r.push_ms, r.pull_ms, r.updates_ms, r.round_trip_ms) == (4, 4, 4, 12)
    assert r.server_ms == 4  # links in, out and updates overlap on a server with a copy engine
    assert r.step_ms == pytest.approx(step) and r.bound == bound
    assert r.exposed_ms == pytest.approx(step - C)


def test_a_cpu_server_moves_messages_and_updates_itself_so_staleness_cannot_beat_it() -> None:
    # O = push + N U + pull = 12 ms on a CPU server: at s = 3 the step is the servers', not compute's.
    r = async_server_step(star("cpu"), WORKERS, SERVERS, P, C, 3)
    assert r.server_ms == 12 and r.step_ms == 12 and r.bound == "servers"
    # A message costs its CPU end 3 ms: s0 receives two per phase, 6 ms > the links' 4 ms.
    r = async_server_step(star("cpu"), WORKERS, SERVERS, P, C, 0, message_ms=lambda nbytes: 3.0)
    assert (r.push_ms, r.pull_ms, r.round_trip_ms, r.step_ms) == (6, 6, 16, 21)


def test_one_server_behind_one_link_carries_every_workers_bytes() -> None:
    # One server holds all 4 MB: its link carries 2 x 4 MB each way (8 ms), one update (3 + 0) x 4 MB /
    # 5 GB/s = 2.4 ms (SGD, no state), two per step 4.8 ms: R = 8 + 4.8 + 8 = 20.8 ms.
    r = async_server_step(star("gpu"), WORKERS, ("s0",), P, C, 0, optimizer_state_factor=0.0)
    assert (r.push_ms, r.pull_ms) == (8, 8) and r.updates_ms == pytest.approx(4.8)
    assert r.step_ms == pytest.approx(C + 20.8)


def test_servers_behind_unequal_links_hold_shards_sized_to_them() -> None:
    # Workers on 4 GB/s links; s0 behind 3 GB/s, s1 behind 1 GB/s: s0 holds 3 MB of the 4, s1 1 MB
    # (placement.sharding.shard_fractions). Push: 2 x 3 MB into s0 at 3 GB/s and 2 x 1 MB into s1 at
    # 1 GB/s, 2 ms each (a worker's uplink carries 4 MB at 4 GB/s, 1 ms): 2 ms; the pull the same. The
    # slowest server's update: (3 + 2) x 3 MB / 5 GB/s = 3 ms, two per step: R = 2 + 6 + 2 = 10 ms.
    # Equal shards would have put 2 x 2 MB through s1's 1 GB/s link: 4 ms each way.
    devices = [Device(f"d{i}", "X", "gpu", "h", {"float32": 1e12}, 1e11, 1e12) for i in range(2)]
    devices += [Device(f"s{i}", "gpu", "gpu", "h", {"float32": 1e11}, 5e9, 1e12) for i in range(2)]
    links = [Link("d0", "sw", "pcie", 4e9), Link("d1", "sw", "pcie", 4e9), Link("s0", "sw", "pcie", 3e9), Link("s1", "sw", "pcie", 1e9)]
    r = async_server_step(Cluster("uneven", devices, links, [Switch("sw", "pcie_switch", "h")]), WORKERS, SERVERS, P, C, 0)
    assert (r.push_ms, r.pull_ms) == (pytest.approx(2), pytest.approx(2))
    assert r.updates_ms == pytest.approx(6) and r.round_trip_ms == pytest.approx(10)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="distinct"):
        async_server_step(star("gpu"), ("d0", "s0"), ("s0",), P, C, 1)
    with pytest.raises(ConfigurationError, match="'x' is not a device"):
        async_server_step(star("gpu"), ("d0", "x"), ("s0",), P, C, 1)
    with pytest.raises(ConfigurationError, match="staleness=-1"):
        async_server_step(star("gpu"), WORKERS, SERVERS, P, C, -1)


def test_the_step_simulator_and_the_schedules_refuse_staleness_and_name_what_runs_and_prices_it() -> None:
    g = Graph("one")
    g.add_node(NodeData("a", "op", measured_ms={"X": 1.0}, param_bytes=MB))
    sync = ParameterServerSync(("s0",), staleness=2)
    with pytest.raises(ConfigurationError, match="staleness=2.*placement.simulate.async_server_step"):
        simulate(g, star("cpu"), {"a": "d0"}, microbatches=2, replicas={"d0": ["d0", "d1"]}, sync=sync)
    plan = Plan(graph_name="one", graph_fingerprint="", cluster_name="star", objective="throughput", mode="training",
                assignment={"a": "d0"}, stages=[Stage(0, ["a"], ["d0", "d1"])], microbatches=2, sync=sync,
                graph=g, cluster=star("cpu"))  # fmt: skip
    with pytest.raises(ScheduleError, match="runtime.servers.train_async.*placement.simulate.async_server_step"):
        make_schedule(plan, "gpipe")
