"""Training across namespace hosts (runtime.hosts): one rank per host, torchrun on each host meeting at host 0.

A placed (latency) plan and a pipeline over ``h0/cpu0`` and ``h1/cpu0`` give eager PyTorch's losses and
parameters, and ``graphc run`` itself, run on each host with ``--nnodes 2 --node-rank i --master-addr``,
trains the plan across the hosts' link.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hosts_cases import DEVICES, MODEL, crossing_bytes, gpt2_plan, graphc_run_argv
from runtime_cases import RTOL, build

from graphc.zoo import zoo_loss
from placement.plan import Plan
from runtime import DistributedExecutor, init_from_env
from runtime.hosts import spawn_on_hosts
from runtime.rebuild import partition_model
from runtime.testing import eager_run, relative_difference

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 2


def sgd(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD, whose update is linear in the gradient (Adam's near-zero gradients amplify the last bits a
    pipeline's sum over microbatches changes)."""
    return torch.optim.SGD(params, lr=0.1)


def train(model: str, plan: dict[str, Any], steps: int) -> dict[str, Any]:
    """What every rank runs: ``steps`` SGD steps of the zoo ``model`` placed by ``plan``; this rank's
    losses (where the loss is computed) and parameters."""
    init_from_env()
    zm = build(model)
    program = partition_model(zm.model, zm.example_inputs, Plan.from_dict(plan), granularity="op", name=model)
    executor = DistributedExecutor(program, loss_fn=zoo_loss(zm), optimizer=sgd, timeout_s=60)
    losses = [executor.step(zm.example_inputs, zm.targets).loss for _ in range(steps)]
    params = {n: p.detach() for n, p in executor.named_parameters()}
    executor.close()
    return {"losses": losses, "params": params}


@pytest.mark.parametrize("microbatches", [1, 2], ids=["placed", "pipeline"])
def test_training_across_two_hosts_equals_eager(make_hosts, microbatches):
    hosts = make_hosts(2, bandwidth=100e6 / 8)
    plan = gpt2_plan(microbatches)
    outcomes = spawn_on_hosts(hosts, train, (MODEL, plan.to_dict(), STEPS), timeout_s=240)
    for outcome in outcomes:
        assert outcome.ok, f"rank {outcome.rank} failed: {outcome.error}"
    ref = build(MODEL)
    eager = eager_run(ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo_loss(ref), sgd, steps=STEPS)
    (losses,) = [o.result["losses"] for o in outcomes if o.result["losses"][0] is not None]
    assert losses == pytest.approx(eager.losses, rel=RTOL)
    params = {n: p for o in outcomes for n, p in o.result["params"].items()}
    worst, where = relative_difference(params, eager.params)
    assert worst < RTOL, f"parameter {where} differs from eager's by {worst:.2e}"
    assert all(o.result["params"] for o in outcomes)  # both hosts hold part of the model


def test_graphc_run_on_each_host_trains_across_them(make_hosts, tmp_path):
    hosts = make_hosts(2, bandwidth=100e6 / 8)
    plan_path, out = tmp_path / "plan.json", tmp_path / "measured.json"
    plan = gpt2_plan(2)
    plan.save(plan_path)
    before = [hosts.traffic(h) for h in hosts]
    options = ("--steps", "2", "--warmup", "1", "--json", str(out))
    finished = hosts.run_all({h: graphc_run_argv(hosts, h, plan_path, *options) for h in hosts}, timeout_s=240)
    for host, done in zip(hosts, finished):
        assert done.returncode == 0, f"graphc run on {host.name} failed: {done.stderr[-3000:]}"
    measured = json.loads(out.read_text())
    assert len(measured["steps_ms"]) == 2 and set(measured["peak_memory_bytes"]) == set(DEVICES)
    assert "gpt2 on 2 rank(s)" in finished[1].stdout  # the output device's host prints the table
    for host, bytes_before in zip(hosts, before):  # 4 steps (warmup, 2 timed, memory), forward and backward
        assert hosts.traffic(host) - bytes_before > 4 * 2 * crossing_bytes(plan), "the steps' tensors did not cross the hosts' link"


def test_plain_values_only_cross_between_hosts(make_hosts):
    from graphc.ir.errors import ConfigurationError

    hosts = make_hosts(1)
    with pytest.raises(ConfigurationError, match="ranks take and return only"):
        spawn_on_hosts(hosts, train, (MODEL, torch.nn.Linear(1, 1), 1))
