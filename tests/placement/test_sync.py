"""placement.sync: the synchronisation a plan records, its JSON, gradient buckets and islands."""

from __future__ import annotations

import pytest

from graphc.ir.graph import Graph, NodeData
from placement import Cluster, ConfigurationError, Device, Link, Switch
from placement.errors import PlanFormatError
from placement.sync import (
    AllReduceSync,
    Bucket,
    ElasticAveragingSync,
    LocalSGDSync,
    ParameterServerSync,
    any_sync_from_dict,
    gradient_buckets,
    islands,
    sync_from_dict,
    sync_to_dict,
)


def chain(param_bytes: list[float]) -> Graph:
    g = Graph("chain")
    for i, p in enumerate(param_bytes):
        g.add_node(NodeData(f"n{i}", "linear", param_bytes=p, output_bytes=4.0))
        if i:
            g.add_edge(f"n{i - 1}", f"n{i}")
    return g


def test_buckets_close_once_they_reach_the_cap_in_backward_order() -> None:
    g = chain([10, 0, 30, 5, 20, 1])
    backward = [f"n{i}" for i in reversed(range(6))]
    assert gradient_buckets(g, backward, 25) == [
        Bucket(0, ("n5", "n4", "n3"), 26),  # 1 + 20 + 5 reaches 25
        Bucket(1, ("n2",), 30),
        Bucket(2, ("n0",), 10),  # n1 has no parameters; the rest closes the last bucket
    ]


def test_one_bucket_without_a_cap_and_none_without_parameters() -> None:
    g = chain([10, 0, 30])
    assert gradient_buckets(g, ["n2", "n1", "n0"], None) == [Bucket(0, ("n2", "n0"), 40)]
    assert gradient_buckets(chain([0, 0]), ["n1", "n0"], 25) == []


def test_sync_json_round_trip() -> None:
    for sync in (AllReduceSync(), AllReduceSync("hierarchical", None), ParameterServerSync(("cpu0", "cpu1"), 2, 1e6)):
        assert sync_from_dict(sync_to_dict(sync)) == sync


def test_averaging_sync_json_round_trip_and_a_plan_refuses_them() -> None:
    records = (
        ElasticAveragingSync(),
        ElasticAveragingSync(tau=4, alpha=0.2, momentum=0.9),
        ElasticAveragingSync(tau=10, asynchronous=True, prefetch=5),
        LocalSGDSync(),
        LocalSGDSync(period=500, outer="nesterov"),
    )
    for sync in records:
        assert any_sync_from_dict(sync_to_dict(sync)) == sync
    assert sync_to_dict(records[2]) == {"kind": "elastic-averaging", "tau": 10, "alpha": None, "momentum": 0.0, "asynchronous": True, "prefetch": 5}
    assert any_sync_from_dict(sync_to_dict(AllReduceSync("hierarchical", None))) == AllReduceSync("hierarchical", None)
    with pytest.raises(PlanFormatError, match="plan.json: sync: expected an object with kind 'allreduce' or 'parameter-server'"):
        sync_from_dict(sync_to_dict(LocalSGDSync()), "plan.json")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"kind": "elastic-averaging", "tau": 0}, "tau=0: expected an integer >= 1"),
        ({"kind": "elastic-averaging", "tau": 2.5}, "tau=2.5: expected an integer >= 1"),
        ({"kind": "elastic-averaging", "alpha": 1.5}, "alpha=1.5: expected 0 < alpha <= 1"),
        ({"kind": "elastic-averaging", "alpha": 0}, "alpha=0: expected 0 < alpha <= 1"),
        ({"kind": "elastic-averaging", "momentum": 1.0}, "momentum=1.0: expected 0 <= momentum < 1"),
        ({"kind": "elastic-averaging", "tau": 10, "prefetch": 10, "asynchronous": True}, "prefetch=10: expected an integer 0 <= prefetch < tau = 10"),
        ({"kind": "elastic-averaging", "prefetch": 5}, "only asynchronous EASGD fetches the center ahead"),
        ({"kind": "elastic-averaging", "asynchronous": "yes"}, "asynchronous='yes': expected true or false"),
        ({"kind": "elastic-averaging", "beta": 0.9}, "sync.beta: unknown field for kind 'elastic-averaging'"),
        ({"kind": "local-sgd", "period": 0}, "period=0: expected an integer >= 1"),
        ({"kind": "local-sgd", "outer": "adam"}, "outer='adam': expected one of"),
    ],
)
def test_bad_averaging_sync_is_refused_naming_the_field(doc: dict, message: str) -> None:
    with pytest.raises(PlanFormatError, match=message):
        any_sync_from_dict(doc, "choice.json")
    fields = {k: v for k, v in doc.items() if k != "kind"}
    if "beta" not in fields:  # the same error in code, as a ConfigurationError
        cls = ElasticAveragingSync if doc["kind"] == "elastic-averaging" else LocalSGDSync
        with pytest.raises(ConfigurationError, match=message):
            cls(**fields)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"kind": "gossip"}, "expected an object with kind"),
        ({"kind": "allreduce", "algorithm": "tree"}, "algorithm 'tree'"),
        ({"kind": "allreduce", "bucket_bytes": 0}, "bucket_bytes=0"),
        ({"kind": "allreduce", "servers": ["cpu0"]}, "sync.servers: unknown field"),
        ({"kind": "parameter-server", "servers": "cpu0"}, "expected a list of device names"),
        ({"kind": "parameter-server", "servers": []}, "one or more distinct devices"),
        ({"kind": "parameter-server", "servers": ["cpu0"], "staleness": -1}, "staleness=-1"),
    ],
)
def test_bad_sync_is_refused_naming_the_field(doc: dict, message: str) -> None:
    with pytest.raises(PlanFormatError, match=message) as info:
        sync_from_dict(doc, "plan.json")
    assert str(info.value).startswith("plan.json: sync")


def test_bad_settings_in_code_raise_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="expected one of"):
        AllReduceSync("butterfly")
    with pytest.raises(ConfigurationError, match="distinct"):
        ParameterServerSync(("cpu0", "cpu0"))


def gpu(name: str, host: str) -> Device:
    return Device(name, "X", "gpu", host, {"float32": 1e13}, 9e11, 16e9)


def test_islands_are_hosts_across_hosts_and_pcie_switches_inside_one() -> None:
    two_hosts = Cluster(
        "two",
        [gpu("a0", "A"), gpu("a1", "A"), gpu("b0", "B"), gpu("b1", "B")],
        [Link(d, "sw", "ethernet", 1e8) for d in ("a0", "a1", "b0", "b1")],
        [Switch("sw", "network")],
    )
    assert islands(two_hosts, ["b1", "a0", "b0", "a1"]) == [("b1", "b0"), ("a0", "a1")]
    one_host = Cluster(
        "one",
        [gpu(f"g{i}", "h") for i in range(4)] + [gpu("lone", "h")],
        [Link(f"g{i}", f"p{i // 2}", "pcie", 1e10) for i in range(4)]
        + [Link("p0", "cpu", "pcie", 1e10), Link("p1", "cpu", "pcie", 1e10), Link("lone", "cpu", "pcie", 1e10)],
        [Switch("p0", "pcie_switch", "h"), Switch("p1", "pcie_switch", "h"), Switch("cpu", "cpu_socket", "h")],
    )
    assert islands(one_host, ["g0", "g2", "g1", "g3", "lone"]) == [("g0", "g1"), ("g2", "g3"), ("lone",)]
