"""One error tree: every exception class of graphc, placement and the runtime is defined in
graphc.ir.errors under GraphcError, the old import paths name the same classes, public functions
raise a kind of the tree on bad input, and the command line turns each into one line and exit 2."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import graphc
import placement
import runtime
from graphc.app.cli import main
from graphc.ir import errors
from graphc.ir.errors import (
    ArgumentTypeError,
    ConfigurationError,
    FormatError,
    GraphcError,
    MismatchError,
    MissingFileError,
    PlacementError,
    PlanFormatError,
    RuntimeFault,
    ScheduleError,
    UnknownNameError,
)
from graphc.ir.graph import Graph, NodeData
from placement import Cluster, Device, Link, Plan, Switch

PACKAGES = (graphc, placement, runtime)


def all_modules() -> list[str]:
    """Every module of the three packages, imported."""
    names = []
    for package in PACKAGES:
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)
            names.append(info.name)
    return [p.__name__ for p in PACKAGES] + names


def exception_classes() -> dict[str, type[BaseException]]:
    """module.qualname -> class, for every exception class defined (not imported) in the packages."""
    found = {}
    for name in all_modules():
        for _, obj in inspect.getmembers(sys.modules[name], inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.split(".")[0] in {p.__name__ for p in PACKAGES}:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


# -- the tree ---------------------------------------------------------------------------------------
def test_every_exception_class_is_defined_in_the_one_module_under_graphc_error() -> None:
    classes = exception_classes()
    assert len(classes) >= 20  # the walk found the tree (and more, were there strays)
    elsewhere = [name for name, cls in classes.items() if cls.__module__ != "graphc.ir.errors"]
    assert not elsewhere, f"exception classes outside graphc/ir/errors.py: {elsewhere}"
    assert all(issubclass(cls, GraphcError) for cls in classes.values())


def test_no_module_but_the_errors_module_defines_an_exception_class_in_its_source() -> None:
    """The same rule read from the files, so that a module that fails to import cannot hide a class."""
    roots = [Path(p.__file__).parent for p in PACKAGES]
    strays = []
    tree_names = {name for name, obj in vars(errors).items() if inspect.isclass(obj)}
    for path in (f for root in roots for f in root.rglob("*.py")):
        if path == Path(errors.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if bases & (tree_names | {"Exception", "BaseException", "ValueError", "KeyError", "TypeError", "RuntimeError"}):
                    strays.append(f"{path}:{node.lineno} {node.name}")
    assert not strays


def test_every_class_of_the_tree_says_in_its_docstring_when_it_is_raised() -> None:
    for name, cls in vars(errors).items():
        if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == errors.__name__:
            doc = vars(cls).get("__doc__")
            assert doc and doc.strip(), name


def test_the_kinds_and_their_members() -> None:
    kinds = {
        FormatError: ["GraphFormatError", "PlanFormatError", "ClusterFormatError", "ProfileFormatError", "MissingFileError"],
        PlacementError: ["InfeasibleError", "DPTimeout", "TooManyIdeals", "PlacementNotReusable", "ScheduleError"],
        RuntimeFault: ["RankFailure", "RunFailed"],
        ConfigurationError: ["ArgumentTypeError", "UnknownNameError"],
    }
    for kind, members in kinds.items():
        assert kind.__bases__ == (GraphcError,) or kind is ConfigurationError
        for member in members:
            assert issubclass(getattr(errors, member), kind), member
    assert issubclass(ConfigurationError, ValueError) and issubclass(ArgumentTypeError, TypeError)
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(UnknownNameError, KeyError)
    assert str(UnknownNameError("graph 'g' has no node 'x'")) == "graph 'g' has no node 'x'"  # not KeyError's repr
    assert not issubclass(MismatchError, (PlacementError, RuntimeFault, ConfigurationError))


def test_old_import_paths_name_the_classes_of_the_tree() -> None:
    from placement.constraints import InfeasibleError
    from placement.errors import ClusterFormatError, ProfileFormatError
    from placement.pipeline import DPTimeout, TooManyIdeals
    from placement.plan import PlanMismatchError
    from placement.schedules import ScheduleError as PlacementScheduleError
    from placement.solvers.reuse import PlacementNotReusable
    from runtime.errors import ProgramMismatch, RankFailure, RunFailed

    assert PlanMismatchError is ProgramMismatch is MismatchError is runtime.ProgramMismatch
    assert PlacementScheduleError is runtime.ScheduleError is ScheduleError
    for cls in (InfeasibleError, ClusterFormatError, ProfileFormatError, DPTimeout, TooManyIdeals,
                PlacementNotReusable, RankFailure, RunFailed):  # fmt: skip
        assert cls is getattr(errors, cls.__name__)


def test_the_packages_export_the_kinds_their_users_catch() -> None:
    for name in ("GraphcError", "FormatError", "MismatchError", "ConfigurationError", "PlacementError", "TraceError", "RuntimeFault"):
        assert getattr(graphc, name) is getattr(errors, name) and name in graphc.__all__
    for name in ("ConfigurationError", "MismatchError", "PlacementError", "InfeasibleError", "PlanFormatError", "ScheduleError"):
        assert getattr(placement, name) is getattr(errors, name) and name in placement.__all__
    for name in ("MismatchError", "RuntimeFault", "RankFailure", "ScheduleError"):
        assert getattr(runtime, name) is getattr(errors, name) and name in runtime.__all__


# -- public functions raise a kind of the tree on bad input ---------------------------------------------
def two_nodes() -> Graph:
    g = Graph("g")
    g.add_node(NodeData("a", "op", fwd_flops=1e9, output_bytes=4.0))
    g.add_node(NodeData("b", "op", fwd_flops=1e9))
    g.add_edge("a", "b")
    return g


def star() -> Cluster:
    devices = [Device(f"d{i}", "X", "gpu", "h", {"float32": 1e12}, 1e11, 1e12) for i in range(2)]
    return Cluster("star", devices, [Link(d.name, "sw", "pcie", 1e9) for d in devices], [Switch("sw", "pcie_switch", "h")])


def test_solve_with_an_unknown_solver_names_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown solver 'nosuch'; valid solvers: auto, ") as info:
        placement.solve(two_nodes(), star(), solver="nosuch")
    assert all(name in str(info.value) for name in placement.SOLVERS)


def test_placement_arguments() -> None:
    with pytest.raises(ConfigurationError, match=r"no cluster preset 'nosuch'; presets: .*dgx1-v100"):
        Cluster.preset("nosuch")
    with pytest.raises(ConfigurationError, match="simulate: mode must be one of training, inference, got 'serve'"):
        placement.simulate(two_nodes(), star(), {"a": "d0", "b": "d0"}, mode="serve")
    with pytest.raises(ConfigurationError, match="objective must be one of"):
        placement.solve(two_nodes(), star(), objective="fastest")
    with pytest.raises(ConfigurationError, match="time_limit_s must be > 0 seconds, got '10'"):
        placement.solve(two_nodes(), star(), time_limit_s="10")
    with pytest.raises(UnknownNameError, match="no device spec for kind 'Z80'; known: "):
        Cluster.preset("pcie-4gpu", kind="Z80")
    with pytest.raises(ConfigurationError, match=r"cluster preset 'pcie-4gpu' takes no option\(s\) \['wings'\]; options: kind"):
        Cluster.preset("pcie-4gpu", wings=2)


def test_graph_lookups_and_edits() -> None:
    g = two_nodes()
    with pytest.raises(UnknownNameError, match="graph 'g' has no node 'c'"):
        g.node("c")
    with pytest.raises(KeyError):  # still a KeyError for callers that look up names
        g.edge("b", "a")
    with pytest.raises(ConfigurationError, match="already has a node named 'a'"):
        g.add_node(NodeData("a", "op"))


def test_a_truncated_plan_file_is_a_format_error_naming_the_line_and_what_to_do(tmp_path: Path) -> None:
    plan = placement.solve(two_nodes(), star(), solver="single")
    path = tmp_path / "plan.json"
    plan.save(path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(PlanFormatError, match=r"plan.json: line \d+: not valid JSON .*: write the plan again"):
        Plan.load(path)


def test_frontend_arguments() -> None:
    import torch

    from graphc import trace, zoo
    from graphc.importers import load_dnn_partitioning, load_pipedream

    model = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigurationError, match="granularity must be one of"):
        trace(model, (torch.zeros(1, 2),), granularity="layer")
    with pytest.raises(ArgumentTypeError, match="example input 0 is a list"):
        trace(model, ([1, 2],), granularity="op")
    with pytest.raises(ConfigurationError, match="unknown zoo network 'nosuch'; valid names: alexnet"):
        zoo.build("nosuch")
    with pytest.raises(ConfigurationError, match=r"unknown knob\(s\) \['wings'\] for 'alexnet'; valid knobs: "):
        zoo.build("alexnet", wings=2)
    with pytest.raises(ConfigurationError, match="objective must be one of"):
        load_dnn_partitioning("any.json", objective="fastest")
    with pytest.raises(ConfigurationError, match="device_label must be a non-empty string"):
        load_pipedream("any.txt", device_label="")


# -- the command line: one line, exit 2, no traceback -------------------------------------------------
def truncated_plan(folder: Path) -> Path:
    path = folder / "truncated.json"
    placement.solve(two_nodes(), star(), solver="single").save(path)
    path.write_text(path.read_text()[:200])
    return path


JUDGED = [  # the command, then a pattern of its one line on stderr: what was wrong, what to do
    (["import", "foo.csv"], r"^graphc: error: foo\.csv: unknown graph format '\.csv': expected \.txt \(PipeDream\) or \.json"),
    (["plan", "nosuchmodel"], r"^graphc: error: model 'nosuchmodel': expected a zoo name \(alexnet, .*\) or path\.py:Name$"),
    (["plan", "resnet50", "-c", "nosuchcluster"],
     r"^graphc plan: error: argument -c/--cluster: no cluster preset 'nosuchcluster'; presets: .*dgx1-v100.* \(see graphc plan -h\)$"),
    (["show", "truncated.json"],
     r"^graphc: error: truncated\.json: line \d+: not valid JSON \(.*\); the file is cut short, damaged or not a plan: write the plan again$"),
]


@pytest.mark.parametrize("argv,message", JUDGED, ids=[" ".join(a) for a, _ in JUDGED])
def test_the_judged_command_lines_end_in_one_line_and_exit_2(argv, message, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    truncated_plan(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses an option value itself
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and re.search(message, err.rstrip("\n")), err


@pytest.mark.slow
def test_the_graphc_command_prints_no_traceback_for_the_judged_cases(tmp_path: Path) -> None:
    truncated_plan(tmp_path)
    graphc_command = Path(sys.executable).parent / "graphc"
    for argv, message in JUDGED:
        done = subprocess.run([str(graphc_command), *argv], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "200"}, timeout=120)  # fmt: skip
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.count("\n") == 1 and re.search(message, done.stderr.rstrip("\n")), (argv, done.stderr)
        assert done.stdout == ""
