"""``graphc plan --parallel/--sync/--servers``: the throughput planner's layouts and syncs from the command
line, and clear refusals of bad values before anything is traced."""

from __future__ import annotations

import pytest

from test_cli import no_tracing  # noqa: F401  (the fixture: fail if anything is traced)

from graphc.app.cli import main
from placement.plan import Plan
from placement.sync import ParameterServerSync


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--parallel", "both"],
            "argument --parallel: invalid choice: 'both' (choose from",
        ),
        (["--sync", "tree"], "argument --sync: invalid choice: 'tree' (choose from"),
        (
            ["--servers", ","],
            "argument --servers: expected one or more comma-separated names, got ','",
        ),
    ],
)
def test_bad_parallel_values_exit_2_with_one_line(argv, message, capsys, no_tracing):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "alexnet", "--objective", "throughput", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--parallel", "data"],
            "--parallel: replicas and their sync are planned for --objective throughput, not latency",
        ),
        (
            ["--sync", "ring", "--servers", "cpu0"],
            "--sync, --servers: replicas and their sync are planned for --objective throughput",
        ),
        (
            ["--objective", "throughput", "--servers", "cpu0"],
            "--servers cpu0: servers hold parameters with --sync parameter-server, not --sync auto",
        ),
    ],
)
def test_parallel_options_that_do_not_apply_are_refused_before_tracing(argv, message, capsys, no_tracing):
    assert main(["plan", "alexnet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_plan_data_parallel_says_why_and_saves_the_replicas(tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = [
        "plan",
        "pipedream/alexnet.txt",
        "-c",
        "dgx1-v100",
        "--objective",
        "throughput",
        "--parallel",
        "data",
        "-t",
        "2",
    ]
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    plan = Plan.load(out)
    assert len(plan.stages) == 1 and len(plan.stages[0].devices) >= 2
    assert f"parallel layout: {plan.settings['parallel']['chosen']}" in printed.replace("\n", " ")


def test_plan_parameter_servers_on_the_cluster_cpu(tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = [
        "plan",
        "pipedream/alexnet.txt",
        "-c",
        "pcie-4gpu",
        "--objective",
        "throughput",
        "--parallel",
        "data",
    ]
    assert main([*argv, "--sync", "parameter-server", "-t", "2", "-o", str(out)]) == 0
    plan = Plan.load(out)
    cpu = next(d.name for d in plan.cluster.devices if d.category == "cpu")
    assert isinstance(plan.sync, ParameterServerSync) and plan.sync.servers == (cpu,)
    assert f"parameter servers {cpu}" in capsys.readouterr().out.replace("\n", " ")
