"""How fast two ranks of this machine exchange tensors, to calibrate the cluster a plan is made for.

The ``local`` cluster preset assumes a link between CPU workers (``placement.presets.local``); the real
one is gloo over loopback as the runtime drives it. :func:`measure_link` measures both parts of
``latency + bytes / bandwidth`` the way they matter to a step:

* bandwidth: round trips of a small and a large message between two ranks (the difference of their
  times is the time of the extra bytes);
* latency: a chain of tiny ops whose every op sits on the other device than the one before, trained
  with the :class:`~runtime.distributed.DistributedExecutor` on two ranks and on one: every cut costs a
  message forward and one backward, so the difference of the step times, per message, is what one
  transfer costs the runtime (posting, waking the waiting rank, the autograd functions), which is
  several times the transport's bare latency.

:func:`local_cluster` is the ``local`` preset with that link, so that solvers and the simulator price
transfers as the runtime meets them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from graphc.tracing import trace
from placement import Cluster
from runtime.distributed import DistributedExecutor, init_from_env
from runtime.errors import RuntimeFault
from runtime.launch import spawn
from runtime.partition import PartitionedProgram, split_by_device

SMALL_BYTES = 4096
LARGE_BYTES = 8 << 20
CHAIN_OPS = 32


@dataclass(frozen=True)
class LinkSpeed:
    """A measured link: one-way ``latency_s + bytes / bandwidth`` seconds."""

    latency_s: float
    bandwidth: float

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth


def one_way_seconds(sizes: list[int], repeats: int) -> dict[int, float]:
    """On ranks 0 and 1: the median one-way time of a message of each size (half a round trip)."""
    init_from_env()
    rank = dist.get_rank()
    result = {}
    for size in sizes:
        buffer = torch.zeros(size // 4)
        trips = []
        for _ in range(repeats + 2):  # the first trips set up the connection
            start = time.perf_counter()
            if rank == 0:
                dist.send(buffer, 1)
                dist.recv(buffer, 1)
            else:
                dist.recv(buffer, 0)
                dist.send(buffer, 0)
            trips.append(time.perf_counter() - start)
        result[size] = statistics.median(trips[2:]) / 2
    return result


def chain_step_ms(program: PartitionedProgram, steps: int) -> float:
    """On every rank: the median step time of training ``program`` (a chain, see :func:`_chain`)."""
    init_from_env()
    executor = DistributedExecutor(program, loss_fn=lambda out: out.sum())
    times = [executor.step(torch.ones(1, 8)).step_ms for _ in range(steps + 2)]
    executor.close()
    return statistics.median(times[2:])


def _chain(devices: int) -> PartitionedProgram:
    """``CHAIN_OPS`` tiny linear layers, each on another device than the one before (with 2 devices)."""
    program = trace(nn.Sequential(*[nn.Linear(8, 8) for _ in range(CHAIN_OPS)]), (torch.ones(1, 8),), name="chain")
    position = {n.name: i for i, n in enumerate(n for n in program.graph_module.graph.nodes if n.op != "get_attr")}
    return split_by_device(program.graph_module, lambda node: f"cpu{position[node.name] % devices}")


def measure_link(repeats: int = 30, steps: int = 20) -> LinkSpeed:
    """The link between two gloo ranks of this machine as the runtime meets it (module docstring)."""
    outcomes = spawn(one_way_seconds, 2, ([SMALL_BYTES, LARGE_BYTES], repeats), timeout_s=120)
    one = spawn(chain_step_ms, 1, (_chain(1), steps), timeout_s=120)
    two_devices = _chain(2)
    two = spawn(chain_step_ms, 2, (two_devices, steps), timeout_s=120)
    failed = [str(o.error) for o in [*outcomes, *one, *two] if not o.ok]
    if failed:
        raise RuntimeFault(f"measuring the link between two ranks failed: {failed}")
    one_way = outcomes[0].result
    bandwidth = (LARGE_BYTES - SMALL_BYTES) / max(one_way[LARGE_BYTES] - one_way[SMALL_BYTES], 1e-9)
    messages = 2 * len(two_devices.transfers)  # forward and backward
    per_message_s = (max(o.result for o in two) - one[0].result) / 1e3 / messages
    return LinkSpeed(max(per_message_s, one_way[SMALL_BYTES], 1e-6), bandwidth)


def local_cluster(workers: int, link: LinkSpeed) -> Cluster:
    """The ``local`` preset with ``workers`` CPU workers joined by ``link``."""
    cluster = Cluster.preset("local", workers=workers)
    for each in cluster.links:  # a route crosses two links (worker -> shared memory -> worker)
        each.bandwidth, each.latency_s = link.bandwidth, link.latency_s / 2
    return cluster
