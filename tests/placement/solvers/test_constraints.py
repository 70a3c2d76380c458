"""Constraints: their resolution (pins, colocation, forbidden kinds, budgets, conflicts), the memory
check's message, and every solver honouring them or saying why it cannot."""

from __future__ import annotations

import pytest

from graphc.ir.graph import Graph
from placement.constraints import Constraints, InfeasibleError, check_memory, resolve
from placement.solvers import HEURISTICS, solve
from test_solvers_common import GB, branches, gigabyte_chain, graph, star

SOLVERS_UNDER_TEST = ["single", "round-robin", "m-topo", *HEURISTICS, "cp-sat", "auto"]


def modular() -> Graph:
    """A chain through two modules, ``enc`` and ``dec`` (three nodes each)."""
    names = [("e0", "enc.0"), ("e1", "enc.1"), ("e2", "enc"), ("d0", "dec.0"), ("d1", "dec.1"), ("d2", "dec")]
    g = graph({n: (2, 2, 0.0, 0.0, m) for n, m in names}, [])
    for (a, _), (b, _) in zip(names, names[1:]):
        g.add_edge(a, b)
    return g


# -- resolution ---------------------------------------------------------------------------------------
def test_pin_by_node_and_by_module() -> None:
    r = resolve(modular(), star(3), Constraints(pins={"e0": "d2", "dec": "d1"}))
    assert r.allowed["e0"] == [2]
    assert all(r.allowed[n] == [1] for n in ("d0", "d1", "d2"))
    assert r.allowed["e1"] == [0, 1, 2]


def test_contradictory_pins_name_both() -> None:
    with pytest.raises(InfeasibleError, match=r"'d0' is pinned to 'd1' \(by 'dec'\) and to 'd2' \(by 'd0'\)"):
        resolve(modular(), star(3), Constraints(pins={"dec": "d1", "d0": "d2"}))


def test_colocated_nodes_pinned_apart_conflict() -> None:
    c = Constraints(pins={"e0": "d0", "d2": "d1"}, colocate=[["e0", "d2"]])
    with pytest.raises(InfeasibleError, match=r"colocation group .*'e0'.*'d2'.*no device"):
        resolve(modular(), star(3), c)


def test_colocation_groups_merge_user_groups_and_graph_classes() -> None:
    g = modular()
    g.node("e1").colocation_group = "k"
    g.node("d1").colocation_group = "k"
    r = resolve(g, star(2), Constraints(colocate=[["d1", "d2"]]))
    assert r.group_of["e1"] == r.group_of["d1"] == r.group_of["d2"] == "e1"
    assert r.groups["e1"] == ["e1", "d1", "d2"]


def test_forbidden_kinds() -> None:
    c = star(3, kinds=("cpu",))  # d0 is a CPU
    r = resolve(modular(), c, Constraints(forbid_kinds=["cpu"]))
    assert all(a == [1, 2] for a in r.allowed.values())
    r = resolve(modular(), c, Constraints(forbid_kinds_for={"enc": ["gpu"]}))
    assert r.allowed["e0"] == [0] and r.allowed["d0"] == [0, 1, 2]


def test_node_left_with_no_device_says_why() -> None:
    c = star(2, kinds=("cpu",))
    with pytest.raises(InfeasibleError, match=r"node 'e0' has no device.*may not use \['cpu'\].*pinned to 'd0'"):
        resolve(modular(), c, Constraints(pins={"e0": "d0"}, forbid_kinds_for={"e0": ["cpu"]}))


def test_unknown_selector_and_device_are_errors() -> None:
    with pytest.raises(InfeasibleError, match="'nope' is neither a node nor a module"):
        resolve(modular(), star(2), Constraints(pins={"nope": "d0"}))
    with pytest.raises(InfeasibleError, match="device 'gpu9'"):
        resolve(modular(), star(2), Constraints(memory_budget={"gpu9": 1.0}))


def test_memory_budget_lowers_capacity() -> None:
    r = resolve(modular(), star(2, memory=10 * GB), Constraints(memory_budget={"d1": 2 * GB}))
    assert r.capacity == [10 * GB, 2 * GB]


def test_check_memory_names_device_and_overflow() -> None:
    c = star(2, memory=2 * 2**30)
    r = resolve(modular(), c, Constraints(memory_budget={"d1": 2**30}))
    with pytest.raises(InfeasibleError, match=r"d1 needs 1.50 GiB of 1.00 GiB \(over by 0.50 GiB\)"):
        check_memory({"d0": 2**30, "d1": 1.5 * 2**30}, c, r)
    check_memory({"d0": 2**30, "d1": 2**30}, c, r)


# -- every solver honours them ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", SOLVERS_UNDER_TEST)
def test_pins_and_colocation_are_honoured(name: str) -> None:
    c = Constraints(pins={"a1": "d1", "sink": "d2"}, colocate=[["b1", "b2", "src"]])
    plan = solve(branches(), star(3), constraints=c, solver=name, time_limit_s=1.0)
    a = plan.assignment
    assert a["a1"] == "d1" and a["sink"] == "d2"
    assert a["b1"] == a["b2"] == a["src"]


@pytest.mark.parametrize("name", SOLVERS_UNDER_TEST)
def test_forbidden_kind_is_avoided(name: str) -> None:
    plan = solve(branches(), star(3, kinds=("cpu",)), constraints=Constraints(forbid_kinds=["cpu"]), solver=name, time_limit_s=1.0)
    assert "d0" not in plan.assignment.values()


def big_chain() -> Graph:
    """Six nodes of 1 GB of activations each: 6 GB, more than any 4 GiB device holds."""
    return gigabyte_chain(6)


@pytest.mark.parametrize("name", ["round-robin", "m-topo", *HEURISTICS, "cp-sat", "auto"])
def test_memory_budgets_are_honoured(name: str) -> None:
    c = star(3, memory=4 * 2**30)
    plan = solve(big_chain(), c, constraints=Constraints(memory_budget={"d0": 1.5e9}), solver=name, time_limit_s=1.0)
    assert plan.peak_memory_bytes["d0"] <= 1.5e9
    assert all(peak <= 4 * 2**30 for peak in plan.peak_memory_bytes.values())


def test_single_device_says_how_far_over() -> None:
    with pytest.raises(InfeasibleError, match=r"needs 5.59 GiB.*largest, d0, has 4.00 GiB \(over by 1.59 GiB\)"):
        solve(big_chain(), star(2, memory=4 * 2**30), solver="single")


@pytest.mark.parametrize("name", ["round-robin", "m-topo", *HEURISTICS, "cp-sat", "auto"])
def test_graph_too_large_names_node_bytes_and_free_capacity(name: str) -> None:
    with pytest.raises(InfeasibleError, match=r"does not fit: it needs .* GiB on d\d.*over by .*largest free capacity"):
        solve(big_chain(), star(2, memory=2 * 2**30), solver=name, time_limit_s=1.0)


def test_pinned_node_too_large_for_its_device() -> None:
    with pytest.raises(InfeasibleError, match=r"node 'n0' does not fit.*d1"):
        solve(big_chain(), star(2, memory=4 * 2**30), constraints=Constraints(memory_budget={"d1": 0.5e9}, pins={"n0": "d1"}), solver="heft")
