"""Renamed keywords (graphc.ir.deprecation): the old name warns, names the new one and still works; the
public functions renamed for units keep their old names this release."""

from __future__ import annotations

import warnings

import pytest

from graphc.importers import load_benchmark
from graphc.ir.deprecation import renamed_keywords
from graphc.ir.errors import ArgumentTypeError
from placement import solve
from placement.pipeline import instance_from_problem, noncontiguous_ilp
from placement.problem import make_problem


@renamed_keywords(limit="limit_s")
def _wait(what: str, *, limit_s: float = 1.0) -> tuple[str, float]:
    return what, limit_s


def test_the_old_name_warns_at_the_caller_and_maps_to_the_new_one() -> None:
    with pytest.warns(DeprecationWarning, match=r"_wait: limit= is deprecated .* use limit_s=") as record:
        assert _wait("x", limit=3.0) == ("x", 3.0)
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _wait("x", limit_s=2.0) == ("x", 2.0)
        assert _wait("x") == ("x", 1.0)
    with pytest.raises(ArgumentTypeError, match="give limit_s= only"):
        _wait("x", limit=1.0, limit_s=2.0)


def test_public_functions_accept_their_old_unit_free_names() -> None:
    graph = load_benchmark("pipedream/alexnet.txt")
    with pytest.warns(DeprecationWarning, match="solve: time_limit= is deprecated"):
        old = solve(graph, "pcie-4gpu", solver="m-etf", time_limit=2.0)
    assert old.settings["time_limit"] == solve(graph, "pcie-4gpu", solver="m-etf", time_limit_s=2.0).settings["time_limit"]
    with pytest.warns(DeprecationWarning, match="make_problem: time_limit= is deprecated"):
        problem = make_problem(graph, "pcie-4gpu", objective="throughput", time_limit=3.0)
    assert problem.time_limit == 3.0
    with pytest.warns(DeprecationWarning, match="wall_limit= is deprecated"):
        noncontiguous_ilp(instance_from_problem(problem), time_limit_s=1.0, wall_limit=2.0)
