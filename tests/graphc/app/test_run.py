"""graphc.app.run: the options and torchrun command of ``graphc run``, and a real run through torchrun."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import pytest

import graphc
from graphc import zoo
from graphc.app import cli
from graphc.app.run import SHUTDOWN_S, add_run_arguments, cmd_run, hardware_warning, torchrun_command
from graphc.ir.errors import GraphcError
from placement.plan import Plan, PlanMismatchError
from runtime import contiguous_plan


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> str:
    zm = zoo.build("gpt2", batch_size=2, size="small", dropout=0.0)
    program = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op")
    path = tmp_path_factory.mktemp("plans") / "gpt2-2.json"
    contiguous_plan(program.graph, ["cpu0", "cpu1"]).save(path)
    return str(path)


def test_one_host_runs_torchrun_standalone_with_a_rank_per_device(plan_file):
    command = torchrun_command(parse("gpt2", "--plan", plan_file, "--knob", "dropout=0.0"), 2)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in command and "--nproc-per-node=2" in command
    assert f"--shutdown-timeout={SHUTDOWN_S}" in command  # not torchrun's 30 s once graphc run stops it
    worker = command[command.index("graphc.app.run") + 1 :]
    assert worker[:3] == ["gpt2", "--plan", plan_file] and "dropout=0.0" in worker
    assert "--schedule" not in worker  # the ranks run the plan's default schedule
    chosen = torchrun_command(parse("gpt2", "--plan", plan_file, "--schedule", "1f1b"), 2)
    assert chosen[chosen.index("--schedule") + 1] == "1f1b"


def test_several_hosts_meet_at_host_0(plan_file):
    args = parse("gpt2", "--plan", plan_file, "--nnodes", "2", "--node-rank", "1", "--master-addr", "head")
    command = torchrun_command(args, 1)
    assert "--standalone" not in command
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=head", "--master-port=29500"} <= set(command)
    with pytest.raises(GraphcError, match="needs --master-addr"):
        torchrun_command(parse("gpt2", "--plan", plan_file, "--nnodes", "2"), 1)
    with pytest.raises(GraphcError, match="every device gets a rank"):
        cmd_run(parse("gpt2", "--plan", plan_file, "--nnodes", "3"))


def test_a_plan_for_inference_is_refused_before_any_rank_starts(plan_file, tmp_path):
    inference = dataclasses.replace(Plan.load(plan_file), mode="inference")
    inference.save(tmp_path / "inference.json")
    with pytest.raises(GraphcError, match="graphc run trains, and inference.json is a plan for inference"):
        cmd_run(parse("gpt2", "--plan", str(tmp_path / "inference.json")))


def test_a_plan_for_other_shapes_is_refused_before_any_rank_starts(plan_file):
    with pytest.raises(PlanMismatchError, match="made for batch size 2, not -b 3"):
        cmd_run(parse("gpt2", "--plan", plan_file, "-b", "3", "--size", "small", "--knob", "dropout=0.0"))
    with pytest.raises(PlanMismatchError, match="traced with other inputs"):
        cmd_run(parse("gpt2", "--plan", plan_file, "--size", "small", "--knob", "dropout=0.0", "--knob", "seq_len=8"))
    with pytest.raises(GraphcError, match="--knob: unknown knob"):
        cmd_run(parse("gpt2", "--plan", plan_file, "--size", "small", "--knob", "bogus=1"))


def test_the_batch_size_defaults_to_the_plans(plan_file, capsys):
    """graphc plan then graphc run, with no -b on either side of the pair, run the same batch."""
    assert cmd_run(parse("gpt2", "--plan", plan_file, "--size", "small", "--knob", "dropout=0.0", "--dry-run")) == 0
    assert "--batch-size 2" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [["--steps", "0"], ["-b", "0"], ["--timeout", "0"], ["--timeout", "nan"], ["--warmup", "-1"]])
def test_a_bad_value_ends_graphc_run_with_one_line_and_status_2(bad, capsys):
    with pytest.raises(SystemExit) as exited:  # the plan does not exist: nothing was read or started
        cli.main(["run", "gpt2", "--plan", "no-such-plan.json", *bad])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {bad[0]}" in err and "expected" in err


def test_every_option_says_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "-h"])
    entries: list[str] = []  # an option and its help, joined over the lines they wrap on
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  -"):
            entries.append(line)
        elif entries and line.startswith("    "):
            entries[-1] += " " + line.strip()
    assert len(entries) == 31  # -h, the 21 options of graphc run and its 9 averaging options
    for entry in entries:
        assert "default" in entry or entry.split()[0] in ("-h,", "--plan"), entry
    assert any("default: the batch size the plan was made for" in entry for entry in entries)


def test_a_plan_for_gpus_warns_that_its_prediction_does_not_apply_here(plan_file, tmp_path, capsys):
    assert hardware_warning(Plan.load(plan_file)) is None  # a plan for this machine's CPU workers
    plan = Plan.load(plan_file)
    plan.assignment = {n: d.replace("cpu", "gpu") for n, d in plan.assignment.items()}
    plan.cluster_name = "dgx1-v100"
    plan.save(tmp_path / "dgx1.json")
    argv = ["gpt2", "--plan", str(tmp_path / "dgx1.json"), "--size", "small", "--knob", "dropout=0.0", "--dry-run"]
    assert cmd_run(parse(*argv)) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "'dgx1-v100' (2 x V100)" in err and "do not apply here" in err


@pytest.mark.distributed
def test_graphc_run_trains_through_torchrun(plan_file, tmp_path, capsys):
    """Each rank traces the model and partitions the plan on its own, and the ranks agree."""
    out = tmp_path / "measured.json"
    argv = ["gpt2", "--plan", plan_file, "--size", "small", "--knob", "dropout=0.0"]
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
