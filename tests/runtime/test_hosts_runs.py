"""Training across namespace hosts (runtime.hosts): torchrun on each host, meeting at host 0.

On 2 hosts of 1 or 2 CPU ranks, a placed (latency) plan, pipelines, data parallelism (ring and
hierarchical all-reduce) and parameter servers give eager PyTorch's losses and parameters
(:func:`runtime.hosts.spawn_on_hosts`), and ``graphc run`` itself, run on each host with ``--nnodes 2
--node-rank i --master-addr``, trains a pipeline and data parallel (ring, hierarchical, parameter servers) across the hosts' link to
eager's losses, and with ``--sync easgd`` exchanges with the other host every tau steps.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hosts_cases import DEVICES, MODEL, crossing_bytes, gpt2_plan, graphc_run_argv
from runtime_cases import RTOL, build

import graphc
from graphc.ir.errors import ConfigurationError
from graphc.zoo import zoo_loss
from placement.plan import Plan
from placement.sync import AllReduceSync, ParameterServerSync, Sync
from runtime import DistributedExecutor, contiguous_plan, init_from_env
from runtime.hosts import spawn_on_hosts
from runtime.hosts.net import pids_in
from runtime.rebuild import partition_model
from runtime.testing import eager_run, relative_difference

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 2


def sgd(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD, whose update is linear in the gradient (Adam's near-zero gradients amplify the last bits a
    pipeline's sum over microbatches changes)."""
    return torch.optim.SGD(params, lr=0.1)


def train(model: str, plan: dict[str, Any], steps: int, batch: int = 2) -> dict[str, Any]:
    """What every rank runs: ``steps`` SGD steps of the zoo ``model`` at ``batch`` placed by ``plan``; this
    rank's losses (where the loss is computed) and parameters."""
    init_from_env()
    zm = build(model, batch)
    program = partition_model(zm.model, zm.example_inputs, Plan.from_dict(plan), granularity="op", name=model)
    executor = DistributedExecutor(program, loss_fn=zoo_loss(zm), optimizer=sgd, timeout_s=60)
    losses = [executor.step(zm.example_inputs, zm.targets).loss for _ in range(steps)]
    params = {n: p.detach() for n, p in executor.named_parameters()}
    executor.close()
    return {"losses": losses, "params": params}


@dataclass(frozen=True)
class HostsCase:
    """A plan across 2 hosts of ``per_host`` CPU ranks: its stages (devices, or a list of replicas), its
    microbatches, batch and synchronisation of replicas."""

    stages: list
    microbatches: int = 1
    per_host: int = 1
    batch: int = 2
    sync: Sync | None = None


ALL_FOUR = ["h0/cpu0", "h0/cpu1", "h1/cpu0", "h1/cpu1"]
HOSTS_CASES = {
    "placed": HostsCase(DEVICES),
    "pipeline": HostsCase(DEVICES, microbatches=2),
    "pipeline-2x2": HostsCase(ALL_FOUR, microbatches=4, per_host=2, batch=4),
    "data-parallel-ring": HostsCase([DEVICES], microbatches=2, sync=AllReduceSync("ring")),
    "data-parallel-hierarchical-2x2": HostsCase([ALL_FOUR], microbatches=4, per_host=2, batch=4, sync=AllReduceSync("hierarchical")),
    "parameter-servers-2x2": HostsCase([DEVICES], microbatches=2, per_host=2, batch=4, sync=ParameterServerSync(("h0/cpu1", "h1/cpu1"))),
}


@pytest.mark.parametrize("name", HOSTS_CASES)
def test_training_across_two_hosts_equals_eager(make_hosts, name):
    """Placed, pipelined, data parallel (ring; hierarchical with one island per host) and parameter
    servers (one per host), each rank of a host reaching the other host's only over the shaped link."""
    case = HOSTS_CASES[name]
    hosts = make_hosts(2, bandwidth=100e6 / 8, workers=case.per_host)
    zm = build(MODEL, case.batch)
    graph = graphc.trace(zm.model, zm.example_inputs, name=MODEL, granularity="op").graph
    plan = contiguous_plan(graph, case.stages, microbatches=case.microbatches)
    plan.cluster = hosts.cluster()  # the hierarchical all-reduce's islands are its hosts
    if case.sync is not None:
        plan.sync = case.sync
    before = [hosts.traffic(h) for h in hosts]
    outcomes = spawn_on_hosts(hosts, train, (MODEL, plan.to_dict(), STEPS, case.batch), nproc_per_host=case.per_host, timeout_s=300)
    failed = [f"rank {o.rank}: {o.error}\n{o.traceback}" for o in outcomes if not o.ok]
    assert not failed, "\n".join(failed)
    ref = build(MODEL, case.batch)
    eager = eager_run(ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo_loss(ref), sgd, steps=STEPS)
    for losses in (o.result["losses"] for o in outcomes if o.result["losses"] and o.result["losses"][0] is not None):
        assert losses == pytest.approx(eager.losses, rel=RTOL)
    params = {n: p for o in outcomes for n, p in o.result["params"].items()}
    worst, where = relative_difference(params, eager.params)
    assert worst < RTOL, f"parameter {where} differs from eager's by {worst:.2e}"
    assert all(hosts.traffic(h) > b for h, b in zip(hosts, before))


def test_graphc_run_on_each_host_trains_across_them(make_hosts, tmp_path):
    hosts = make_hosts(2, bandwidth=100e6 / 8)
    plan_path, out = tmp_path / "plan.json", tmp_path / "measured.json"
    plan = gpt2_plan(2)
    plan.save(plan_path)
    before = [hosts.traffic(h) for h in hosts]
    options = ("--steps", "2", "--warmup", "1", "--json", str(out))
    finished = hosts.run_all({h: graphc_run_argv(hosts, h, plan_path, *options) for h in hosts}, timeout_s=240)
    said = "\n".join(f"--- graphc run on {h.name} (status {d.returncode}):\n{d.stderr[-6000:]}" for h, d in zip(hosts, finished))
    assert all(d.returncode == 0 for d in finished), said
    measured = json.loads(out.read_text())
    assert len(measured["steps_ms"]) == 2 and set(measured["peak_memory_bytes"]) == set(DEVICES)
    ref = build(MODEL)
    sgd_001 = lambda params: torch.optim.SGD(params, lr=0.01)
    eager = eager_run(ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo_loss(ref), sgd_001, steps=4)
    assert measured["losses"] == pytest.approx(eager.losses, rel=RTOL)  # warmup, 2 timed steps, the memory step
    assert "gpt2 on 2 rank(s)" in finished[1].stdout  # the output device's host prints the table
    for host, bytes_before in zip(hosts, before):  # 4 steps (warmup, 2 timed, memory), forward and backward
        assert hosts.traffic(host) - bytes_before > 4 * 2 * crossing_bytes(plan), "the steps' tensors did not cross the hosts' link"


def _data_parallel_plan(hosts, replicas: list[str], sync: Sync) -> Plan:
    """The small GPT-2 replicated on ``replicas``, one microbatch of 2 samples each, synchronised by ``sync``."""
    zm = build(MODEL, 2 * len(replicas))
    graph = graphc.trace(zm.model, zm.example_inputs, name=MODEL, granularity="op").graph
    plan = contiguous_plan(graph, [replicas], microbatches=len(replicas))
    plan.cluster, plan.sync = hosts.cluster(), sync
    return plan


GRAPHC_RUN_DATA_PARALLEL = {  # replicas, sync, ranks per host
    "ring": (DEVICES, AllReduceSync("ring"), 1),
    "hierarchical-2x2": (ALL_FOUR, AllReduceSync("hierarchical"), 2),
    "parameter-servers": (DEVICES, ParameterServerSync(("h0/cpu1", "h1/cpu1")), 2),
}


@pytest.mark.parametrize("name", GRAPHC_RUN_DATA_PARALLEL)
def test_graphc_run_on_each_host_trains_data_parallel_across_them(make_hosts, tmp_path, name):
    """The replicas' gradients all-reduced (a ring; inside each host then between them) or pushed to a
    server on each host, over the hosts' link every step: eager's losses on the whole batch."""
    replicas, sync, per_host = GRAPHC_RUN_DATA_PARALLEL[name]
    hosts = make_hosts(2, bandwidth=100e6 / 8, workers=per_host)
    plan_path, out = tmp_path / "plan.json", tmp_path / "measured.json"
    _data_parallel_plan(hosts, replicas, sync).save(plan_path)
    before = [hosts.traffic(h) for h in hosts]
    finished = hosts.run_all({h: graphc_run_argv(hosts, h, plan_path, "--steps", "2", "--warmup", "1", "--json", str(out)) for h in hosts}, timeout_s=240)
    said = "\n".join(f"--- graphc run on {h.name} (status {d.returncode}):\n{d.stderr[-6000:]}" for h, d in zip(hosts, finished))
    assert all(d.returncode == 0 for d in finished), said
    ref = build(MODEL, 2 * len(replicas))
    sgd_001 = lambda params: torch.optim.SGD(params, lr=0.01)
    eager = eager_run(ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo_loss(ref), sgd_001, steps=4)
    assert json.loads(out.read_text())["losses"] == pytest.approx(eager.losses, rel=RTOL)
    parameter_bytes = sum(p.numel() * p.element_size() for p in ref.model.parameters())
    for host, bytes_before in zip(hosts, before):  # 4 steps, each at least half the gradients across the link
        assert hosts.traffic(host) - bytes_before > 4 * parameter_bytes / 2, "the gradients did not cross the hosts' link"


def test_graphc_run_sync_easgd_on_each_host_trains_across_them(make_hosts, tmp_path):
    """graphc run --sync easgd with one worker per host: every tau = 2 steps an elastic exchange over the
    hosts' link, counted by hand (a ring all-reduce of the parameters P over N = 2: P sent per worker)."""
    hosts = make_hosts(2, bandwidth=100e6 / 8)
    plan_path, out = tmp_path / "plan.json", tmp_path / "run.json"
    _data_parallel_plan(hosts, DEVICES, AllReduceSync("ring")).save(plan_path)
    before = [hosts.traffic(h) for h in hosts]
    options = ("--sync", "easgd", "--tau", "2", "--lr", "0.1", "--steps", "6", "--warmup", "0", "--json", str(out))
    finished = hosts.run_all({h: graphc_run_argv(hosts, h, plan_path, *options) for h in hosts}, timeout_s=240)
    said = "\n".join(f"--- graphc run on {h.name} (status {d.returncode}):\n{d.stderr[-6000:]}" for h, d in zip(hosts, finished))
    assert all(d.returncode == 0 for d in finished), said
    run = json.loads(out.read_text())
    assert run["workers"] == {"0": "h0/cpu0", "1": "h1/cpu0"}
    assert len(run["losses"]["0"]) == len(run["losses"]["1"]) == 6
    parameter_bytes = sum(p.numel() * p.element_size() for p in build(MODEL).model.parameters())
    for rank in ("0", "1"):
        assert run["traffic"][rank] == {"sent": 3 * parameter_bytes, "received": 3 * parameter_bytes, "exchanges": 3}
    for host, bytes_before in zip(hosts, before):
        assert hosts.traffic(host) - bytes_before > 3 * parameter_bytes, "the exchanges did not cross the hosts' link"


def test_plain_values_only_cross_between_hosts(make_hosts):
    hosts = make_hosts(1)
    with pytest.raises(ConfigurationError, match="ranks take and return only"):
        spawn_on_hosts(hosts, train, (MODEL, torch.nn.Linear(1, 1), 1))


def test_a_rank_still_running_at_the_timeout_is_killed_and_named(make_hosts):
    hosts = make_hosts(1)
    start = time.monotonic()
    (outcome,) = spawn_on_hosts(hosts, "time:sleep", (600,), timeout_s=5)
    assert time.monotonic() - start < 5 + 10
    assert not outcome.ok and "rank 0 on h0 was still running at the timeout and was killed" in str(outcome.error)
    assert pids_in(hosts[0].namespace) == []  # torchrun and its rank are gone
