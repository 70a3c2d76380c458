"""What the tests across namespace hosts share: a GPT-2 plan over one CPU rank per host, and the
``graphc run`` command line each host runs."""

from __future__ import annotations

import sys
from pathlib import Path

from runtime_cases import build

import graphc
from placement.plan import Plan
from runtime import contiguous_plan
from runtime.hosts import Host, Hosts

MODEL = "gpt2"
DEVICES = ["h0/cpu0", "h1/cpu0"]


def gpt2_plan(microbatches: int) -> Plan:
    """Small GPT-2 (batch 2) cut in two, ``h0/cpu0`` then ``h1/cpu0``: placed (1) or pipelined (> 1)."""
    zm = build(MODEL)
    graph = graphc.trace(zm.model, zm.example_inputs, name=MODEL, granularity="op").graph
    return contiguous_plan(graph, DEVICES, microbatches=microbatches)


def crossing_bytes(plan: Plan) -> float:
    """Bytes of the tensors one forward sends from a device to another under ``plan``."""
    assert plan.graph is not None
    return sum(e.bytes for a, b, e in plan.graph.edges() if plan.assignment[a] != plan.assignment[b])


def graphc_run_argv(hosts: Hosts, host: Host, plan: Path, *options: str) -> list[str]:
    """``graphc run`` of :data:`MODEL` by ``plan`` as ``host`` runs it, meeting the others at host 0."""
    argv = [sys.executable, "-m", "graphc.app.cli", "run", MODEL, "--plan", str(plan), "--size", "small", "--knob", "dropout=0.0"]
    return [*argv, *options, "--nnodes", str(len(hosts)), "--node-rank", str(host.index), "--master-addr", hosts[0].address]
