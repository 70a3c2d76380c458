"""The Big Sur wirings (placement.presets): which link is the bottleneck between which GPUs, the islands a
hierarchical all-reduce finds, the M40 figures, and the talk's A/D/E mapped onto registered presets."""

from __future__ import annotations

import pytest

from placement import Cluster, cluster_presets
from placement.cluster import Link
from placement.presets import BIG_SUR_WIRINGS, PCIE3_X16, QPI_P2P
from placement.specs import DEVICE_SPECS
from placement.sync import islands

WIRINGS = ("pcie-8gpu-switch-tree", "pcie-8gpu-one-socket", "pcie-8gpu-two-sockets")
GPUS = [f"gpu{i}" for i in range(8)]


def bottleneck(cluster: Cluster, src: str, dst: str) -> Link:
    """The slowest link of the route from ``src`` to ``dst`` (the first of them along the route)."""
    links = [cluster.resource_link(r) for r in cluster.route(src, dst).resources]
    return min(links, key=lambda link: link.bandwidth)


def test_one_socket_halves_meet_in_the_root_complex_of_socket0() -> None:
    c = Cluster.preset("pcie-8gpu-one-socket")
    assert c.route("gpu0", "gpu3").hops == ("gpu0", "pcie0", "gpu3")
    assert c.route("gpu3", "gpu4").hops == ("gpu3", "pcie0", "socket0", "pcie1", "gpu4")
    assert c.route("gpu3", "gpu4").latency_s == pytest.approx(4e-6)
    assert all("socket1" not in c.route(a, b).hops for a in GPUS for b in GPUS)


@pytest.mark.parametrize(
    ("wiring", "hops"),
    [
        ("pcie-8gpu-switch-tree", ("gpu3", "pcie1", "pcie0", "pcie2", "gpu4")),
        ("pcie-8gpu-one-socket", ("gpu3", "pcie0", "socket0", "pcie1", "gpu4")),
        ("pcie-8gpu-two-sockets", ("gpu3", "pcie1", "socket0", "socket1", "pcie2", "gpu4")),
    ],
)
def test_route_between_the_halves(wiring: str, hops: tuple[str, ...]) -> None:
    assert Cluster.preset(wiring).route("gpu3", "gpu4").hops == hops


@pytest.mark.parametrize(
    ("wiring", "link", "bandwidth"),
    [
        # The halves meet in a PCIe switch or a root complex: the GPU's own x16 link is as slow as any.
        ("pcie-8gpu-switch-tree", "pcie1--gpu3", PCIE3_X16),
        ("pcie-8gpu-one-socket", "pcie0--gpu3", PCIE3_X16),
        # They meet across the sockets: the QPI is the bottleneck.
        ("pcie-8gpu-two-sockets", "socket0--socket1", QPI_P2P),
    ],
)
def test_bottleneck_between_the_halves(wiring: str, link: str, bandwidth: float) -> None:
    found = bottleneck(Cluster.preset(wiring), "gpu3", "gpu4")
    assert (found.name, found.bandwidth) == (link, bandwidth)


@pytest.mark.parametrize("wiring", WIRINGS)
def test_within_a_quarter_the_pcie_link_is_the_bottleneck(wiring: str) -> None:
    c = Cluster.preset(wiring)
    assert c.bottleneck_bandwidth("gpu0", "gpu1") == PCIE3_X16
    assert bottleneck(c, "gpu0", "gpu1").kind == "pcie"


def test_only_the_two_sockets_wiring_crosses_the_qpi() -> None:
    crossing = {w for w in WIRINGS for a in GPUS for b in GPUS if "qpi" in {link.kind for link in (
        Cluster.preset(w).resource_link(r) for r in Cluster.preset(w).route(a, b).resources)}}  # fmt: skip
    assert crossing == {"pcie-8gpu-two-sockets"}
    two = Cluster.preset("pcie-8gpu-two-sockets")
    assert two.bottleneck_bandwidth("gpu0", "gpu3") == PCIE3_X16
    assert two.bottleneck_bandwidth("gpu0", "gpu4") == QPI_P2P


@pytest.mark.parametrize(
    ("wiring", "expected"),
    [
        ("pcie-8gpu-switch-tree", [tuple(GPUS[:4]), tuple(GPUS[4:])]),
        ("pcie-8gpu-one-socket", [tuple(GPUS[:4]), tuple(GPUS[4:])]),
        ("pcie-8gpu-two-sockets", [tuple(GPUS[i : i + 2]) for i in range(0, 8, 2)]),
    ],
)
def test_hierarchical_islands_are_the_gpu_switches(wiring: str, expected: list[tuple[str, ...]]) -> None:
    assert islands(Cluster.preset(wiring), GPUS) == expected


@pytest.mark.parametrize("wiring", WIRINGS)
def test_m40_gpus_carry_the_datasheet_figures(wiring: str) -> None:
    c = Cluster.preset(wiring, kind="M40")
    assert len(c) == 8
    gpu = c.device("gpu5")
    assert (gpu.kind, gpu.peak("float32"), gpu.memory_bandwidth, gpu.memory_bytes) == ("M40", 7e12, 288e9, 12 * 2**30)
    assert DEVICE_SPECS["M40"].source


def test_talk_wirings_are_three_distinct_registered_presets() -> None:
    assert sorted(BIG_SUR_WIRINGS) == ["A", "D", "E"]
    assert set(BIG_SUR_WIRINGS.values()) == set(WIRINGS)
    assert set(WIRINGS) <= set(cluster_presets())
