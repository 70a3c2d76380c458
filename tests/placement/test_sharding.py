"""placement.sharding.assign_shards: buckets to parameter servers by the longest-processing-time rule,
balanced by bytes over each server's slowest link from the workers; refusals."""

from __future__ import annotations

import pytest

from placement import Cluster, ConfigurationError, Device, Link, Switch
from placement.sharding import assign_shards, shard_fractions
from placement.sync import Bucket

GB = 1e9


def cluster(server_bandwidth: dict[str, float], w1_bandwidth: float = 4 * GB) -> Cluster:
    """Workers w0 (on a 4 GB/s link) and w1 (``w1_bandwidth``) on one switch; each server on a link of the
    given bandwidth."""
    names = ["w0", "w1", *server_bandwidth]
    devices = [Device(n, "X", "gpu", "h", {"float32": 1e12}, 1e11, 1e12) for n in names]
    links = [Link("w0", "sw", "pcie", 4 * GB), Link("w1", "sw", "pcie", w1_bandwidth)]
    links += [Link(s, "sw", "pcie", bw) for s, bw in server_bandwidth.items()]
    return Cluster("star", devices, links, [Switch("sw", "pcie_switch", "h")])


def buckets(sizes: list[float]) -> list[Bucket]:
    return [Bucket(i, (f"n{i}",), size) for i, size in enumerate(sizes)]


def held(owner: dict[int, str], sizes: list[float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, server in owner.items():
        out[server] = out.get(server, 0.0) + sizes[i]
    return out


def test_equal_links_balance_the_bytes():
    sizes = [2.0, 5.0, 3.0, 4.0, 2.0]
    owner = assign_shards(buckets(sizes), ["s0", "s1"], cluster({"s0": GB, "s1": GB}), ["w0", "w1"])
    # by hand: 5 -> s0 (5); 4 -> s1 (4); 3 -> s1 (7 < 8); 2 (bucket 0) -> s0 (7 < 9); 2 (bucket 4) -> tie 9/9: s0
    assert owner == {1: "s0", 3: "s1", 2: "s1", 0: "s0", 4: "s0"}
    assert held(owner, sizes) == {"s0": 9.0, "s1": 7.0}


def test_a_server_on_a_link_half_as_fast_gets_half_the_bytes():
    # loads in bytes / (GB/s), s0 at 2, s1 at 1: 4 -> s0 (2 < 4); 2 -> s1 (2 < 3); 2 -> s0 (3 < 4);
    # 2 -> tie 4 = 4: s0 (the earlier server); 2 -> s1 (4 < 5)
    sizes = [4.0, 2.0, 2.0, 2.0, 2.0]
    owner = assign_shards(buckets(sizes), ["s0", "s1"], cluster({"s0": 2 * GB, "s1": GB}), ["w0", "w1"])
    assert owner == {0: "s0", 1: "s1", 2: "s0", 3: "s0", 4: "s1"}
    assert held(owner, sizes) == {"s0": 8.0, "s1": 4.0}


def test_the_slowest_route_from_any_worker_counts():
    # From w0, s0 (4 GB/s) is four times nearer than s1 (1 GB/s) and would take all 8 bytes; but w1 reaches
    # both over its own 1 GB/s link, so both servers are 1 GB/s away and the bytes balance.
    sizes = [2.0, 2.0, 2.0, 2.0]
    fast, slow = {"s0": 4 * GB, "s1": GB}, GB
    assert held(assign_shards(buckets(sizes), ["s0", "s1"], cluster(fast), ["w0"]), sizes) == {"s0": 8.0}
    assert held(assign_shards(buckets(sizes), ["s0", "s1"], cluster(fast, slow), ["w0", "w1"]), sizes) == {
        "s0": 4.0,
        "s1": 4.0,
    }


def test_no_buckets_no_shards_and_one_server_holds_all():
    c = cluster({"s0": GB, "s1": GB})
    assert assign_shards([], ["s0"], c, ["w0"]) == {}
    assert assign_shards(buckets([1.0, 2.0]), ["s1"], c, ["w0", "w1"]) == {0: "s1", 1: "s1"}


@pytest.mark.parametrize(
    ("servers", "workers", "message"),
    [
        ([], ["w0"], "parameter servers: none given"),
        (["s0"], [], "no worker given"),
        (["cpu9"], ["w0"], "'cpu9' is not a device of cluster 'star'"),
        (["s0"], ["w7"], "'w7' is not a device"),
    ],
)
def test_refusals_name_the_problem(servers, workers, message):
    with pytest.raises(ConfigurationError, match=message):
        assign_shards(buckets([1.0]), servers, cluster({"s0": GB}), workers)


def test_shard_fractions_size_contiguous_shards_to_the_servers_links():
    # s0 behind 3 GB/s, s1 behind 1 GB/s: s0 takes three quarters, so both move their shard in the same time.
    assert shard_fractions(["s0", "s1"], cluster({"s0": 3 * GB, "s1": GB}), ["w0", "w1"]) == pytest.approx([0.75, 0.25])
    assert shard_fractions(["s0", "s1"], cluster({"s0": GB, "s1": GB}), ["w0", "w1"]) == [0.5, 0.5]
    # The slowest route from any worker counts: w1's 0.5 GB/s link caps both servers alike.
    assert shard_fractions(["s0", "s1"], cluster({"s0": 3 * GB, "s1": GB}, w1_bandwidth=GB / 2), ["w0", "w1"]) == [0.5, 0.5]
    with pytest.raises(ConfigurationError, match="parameter servers: none given"):
        shard_fractions([], cluster({"s0": GB}), ["w0"])
