"""runtime.launch: the torchrun command of ``graphc run``, and a real run through torchrun."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

import graphc
from graphc import zoo
from graphc.errors import GraphcError
from placement.plan import PlanMismatchError
from runtime import contiguous_plan
from runtime.launch import add_run_arguments, cmd_run, torchrun_command


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> str:
    zm = zoo.build("gpt2", batch_size=2, size="small", dropout=0.0)
    program = graphc.trace(zm.model, zm.example_inputs, name="gpt2")
    path = tmp_path_factory.mktemp("plans") / "gpt2-2.json"
    contiguous_plan(program.graph, ["cpu0", "cpu1"]).save(path)
    return str(path)


def test_one_host_runs_torchrun_standalone_with_a_rank_per_device(plan_file):
    command = torchrun_command(parse("gpt2", "--plan", plan_file, "--knob", "dropout=0.0"), 2)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in command and "--nproc-per-node=2" in command
    worker = command[command.index("runtime.launch") + 1 :]
    assert worker[:3] == ["gpt2", "--plan", plan_file] and "dropout=0.0" in worker


def test_several_hosts_meet_at_host_0(plan_file):
    args = parse("gpt2", "--plan", plan_file, "--nnodes", "2", "--node-rank", "1", "--master-addr", "head")
    command = torchrun_command(args, 1)
    assert "--standalone" not in command
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=head", "--master-port=29500"} <= set(command)
    with pytest.raises(GraphcError, match="needs --master-addr"):
        torchrun_command(parse("gpt2", "--plan", plan_file, "--nnodes", "2"), 1)
    with pytest.raises(GraphcError, match="every device gets a rank"):
        cmd_run(parse("gpt2", "--plan", plan_file, "--nnodes", "3"))


def test_a_plan_for_other_shapes_is_refused_before_any_rank_starts(plan_file):
    with pytest.raises(PlanMismatchError, match="traced with other inputs"):
        cmd_run(parse("gpt2", "--plan", plan_file, "-b", "3", "--size", "small", "--knob", "dropout=0.0"))


def test_graphc_run_trains_through_torchrun(plan_file, tmp_path, capsys):
    """Each rank traces the model and partitions the plan on its own, and the ranks agree."""
    out = tmp_path / "measured.json"
    argv = ["gpt2", "--plan", plan_file, "-b", "2", "--size", "small", "--knob", "dropout=0.0"]
    assert cmd_run(parse(*argv, "--dry-run")) == 0
    printed = capsys.readouterr().out
    assert "torch.distributed.run" in printed and "── cpu0" in printed and "runtime_comm_send" in printed
    assert cmd_run(parse(*argv, "--steps", "2", "--warmup", "1", "--json", str(out))) == 0
    measured = json.loads(out.read_text())
    assert len(measured["steps_ms"]) == 2 and set(measured["peak_memory_bytes"]) == {"cpu0", "cpu1"}


def test_the_granularity_comes_from_the_plan_unless_given(tmp_path, capsys):
    zm = zoo.build("gpt2", batch_size=2, size="small", dropout=0.0)
    program = graphc.trace(zm.model, zm.example_inputs, granularity="module", name="gpt2")
    path = tmp_path / "module-plan.json"
    contiguous_plan(program.graph, ["cpu0", "cpu1"]).save(path)
    assert cmd_run(parse("gpt2", "--plan", str(path), "-b", "2", "--size", "small", "--knob", "dropout=0.0", "--dry-run")) == 0
    assert "--granularity module" in capsys.readouterr().out
    with pytest.raises(PlanMismatchError):  # traced at op granularity, the nodes are others
        cmd_run(parse("gpt2", "--plan", str(path), "-b", "2", "--size", "small", "--knob", "dropout=0.0", "--granularity", "op"))
