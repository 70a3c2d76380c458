"""Preset clusters, each a function whose docstring gives the figures it uses and where they come from.

Interconnect figures used below (bandwidth is per direction; decimal GB/s):

- NVLink 2 (V100): 25 GB/s per link per direction (NVIDIA DGX-1 with Tesla V100 system architecture
  white paper: "six NVLink connection points, each ... 25 GB/s in each direction"). Pairs joined by
  two links get 50 GB/s.
- NVLink 4 (H100 SXM5): 18 links x 25 GB/s = 450 GB/s per direction per GPU (900 GB/s bidirectional,
  H100 datasheet), into the NVSwitch fabric of the DGX H100.
- PCIe 3.0 x16: 15.75 GB/s raw per direction (8 GT/s x 16 lanes, 128b/130b); 12 GB/s effective for
  large copies, which is what is used. PCIe 5.0 x16: 63 GB/s raw; 50 GB/s effective used.
- Inter-socket link, Intel QPI (Haswell/Broadwell, 9.6 GT/s): 19.2 GB/s per link per direction, but GPU
  peer traffic crossing sockets is staged through host memory and reaches well under one PCIe link's
  rate; 9 GB/s effective is used for device-to-device traffic crossing the QPI. UPI on Sapphire Rapids
  (DGX H100): 4 links x 16 GT/s; 64 GB/s effective used.
- InfiniBand EDR 100 Gb/s = 12.5 GB/s per direction per port (DGX-1: 4 ports); NDR 400 Gb/s = 50 GB/s
  (DGX H100: 8 compute ports). The fabric is a non-blocking fat tree modelled as one switch.
- Commodity Ethernet, 10 GbE and 1 GbE: 10 and 1 Gb/s line rate per direction; TCP over 1500-byte
  frames carries 1448 payload bytes per 1538 on the wire (Ethernet preamble, header, FCS and gap; IP and
  TCP headers with timestamps), 94%: 1.18 GB/s and 0.118 GB/s per direction are used. No RDMA: a GPU's
  message is staged through host memory and the kernel's TCP stack, 25 µs per NIC-to-switch hop (one
  store-and-forward switch, a socket send and receive each side: the order of magnitude of a small
  TCP message's one-way time on such a network, not a measurement).
- Latencies are per link and only matter for small messages: 1 µs for NVLink, PCIe and socket links,
  1.5 µs for a NIC's PCIe attachment and 1 µs for each fabric hop. They stand for the order of
  magnitude, not for a measurement.

Devices come from :data:`placement.specs.DEVICE_SPECS` (datasheet compute, memory bandwidth, capacity).

Big Sur. Facebook's Open Compute GPU server of 2015 (the talk's "PCIe topologies matter"): eight GPUs of
up to 300 W (Tesla M40 at launch) behind PCIe 3.0 switches, a two-socket Intel Xeon (Haswell) head, and a
PCIe topology that is changed by re-cabling (the announcement: "the flexibility to configure between
multiple PCI-e topologies"). That much is from Facebook's announcement and its OCP contribution as we
know them; nothing was downloaded, and the specification's switch counts and cable options are not
reproduced here. The three 8-GPU PCIe presets are the wirings we take such a server to allow, with every
hop PCIe 3.0 x16:

* ``pcie-8gpu-switch-tree``: both 4-GPU switches under a root switch on one socket; peer traffic never
  reaches a CPU;
* ``pcie-8gpu-one-socket``: the two 4-GPU switches on two root ports of the same socket; traffic between
  the halves is forwarded by that socket's root complex;
* ``pcie-8gpu-two-sockets``: four GPUs per socket; traffic between the halves crosses the QPI.

:data:`BIG_SUR_WIRINGS` maps the talk's wirings A, D and E (its slide does not describe them) onto these;
that mapping is our reading, argued there.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from placement.cluster import Cluster, Device, Host, Link, Switch, provide_presets
from placement.errors import ConfigurationError
from placement.specs import CPU_OP_OVERHEAD_S, GB, DeviceSpec, GiB, spec

NVLINK2 = 25 * GB
NVLINK4_PER_GPU = 18 * 25 * GB
PCIE3_X16 = 12 * GB
PCIE5_X16 = 50 * GB
QPI_P2P = 9 * GB
UPI_SPR = 64 * GB
IB_EDR = 12.5 * GB
IB_NDR = 50 * GB
#: TCP goodput of Ethernet per direction, per Gb/s of line rate (1448 payload bytes per 1538 on the wire).
ETHERNET_PER_GBIT = 1e9 / 8 * 1448 / 1538
ETHERNET_LATENCY_S = 25e-6
CPU_MEMORY_LINK = 68 * GB  # a socket's DDR4 channels, for a CPU device reaching its own socket
LINK_LATENCY_S = 1e-6
NIC_LATENCY_S = 1.5e-6

#: The talk's Big Sur wirings (GTC 2016 slide "PCIe topologies matter": A, D, E) as graphc presets. The
#: slide gives only letters and speed-ups, so this is our reading: we order the wirings by the row of the
#: network built to stress the links ("vggstress": D 7% faster than A, A 3% faster than E), where the
#: links matter most and noise least, and give D the wiring whose peer traffic never leaves the PCIe
#: switches, E the one whose traffic crosses the inter-socket link, A the one in between (the root
#: complex of one socket).
BIG_SUR_WIRINGS: dict[str, str] = {
    "A": "pcie-8gpu-one-socket",
    "D": "pcie-8gpu-switch-tree",
    "E": "pcie-8gpu-two-sockets",
}


@dataclass
class _Builder:
    """Accumulates the records of a cluster; presets call it in the order the hardware is wired."""

    hosts: list[Host] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)

    def host(self, name: str, description: str = "") -> str:
        self.hosts.append(Host(name, description))
        return name

    def device(self, name: str, dspec: DeviceSpec, host: str, memory_bytes: float | None = None, kind: str | None = None) -> str:
        self.devices.append(
            Device(
                name=name,
                kind=kind or dspec.kind,
                category=dspec.category,
                host=host,
                peak_flops=dict(dspec.peak_flops),
                memory_bandwidth=dspec.memory_bandwidth,
                memory_bytes=memory_bytes or dspec.memory_bytes,
                op_overhead_s=dspec.op_overhead_s,
            )
        )
        return name

    def switch(self, name: str, kind: str, host: str | None) -> str:
        self.switches.append(Switch(name, kind, host))
        return name

    def link(self, a: str, b: str, kind: str, bandwidth: float, latency_s: float = LINK_LATENCY_S) -> None:
        self.links.append(Link(a, b, kind, bandwidth, latency_s))

    def build(self, name: str, description: str) -> Cluster:
        return Cluster(name, self.devices, self.links, self.switches, self.hosts, description)


def _gpu_switches(
    b: _Builder, host: str, gpu: DeviceSpec, uplinks: list[str], per_switch: int, first: int = 0, prefix: str = ""
) -> None:
    """PCIe switch ``pcie{first + i}`` under ``uplinks[i]`` for each uplink, each with ``per_switch`` GPUs
    (``gpu0``, ``gpu1``, ... across the switches in order; names after ``prefix``); every hop PCIe 3.0 x16."""
    for i, uplink in enumerate(uplinks):
        sw = b.switch(f"{prefix}pcie{first + i}", "pcie_switch", host)
        b.link(uplink, sw, "pcie", PCIE3_X16)
        for j in range(per_switch):
            b.link(sw, b.device(f"{prefix}gpu{per_switch * i + j}", gpu, host), "pcie", PCIE3_X16)


# -- single hosts ---------------------------------------------------------------------------------
def pcie_8gpu_switch_tree(kind: str = "V100-PCIe") -> Cluster:
    """8 GPUs under one PCIe switch tree of one socket (``pcie-8gpu-switch-tree``).

    Socket 0 -- root PCIe switch -- two leaf switches -- four GPUs each (PCIe 3.0 x16, 12 GB/s
    effective per direction on every hop). Peer copies never leave the tree; GPUs under one leaf cross
    two hops, GPUs under different leaves four (both bottlenecked at 12 GB/s). Socket 1 holds no GPU and
    is joined by QPI (9 GB/s effective for device traffic). Default GPUs: V100 PCIe (14 TFLOP/s fp32,
    112 TFLOP/s fp16 tensor, 900 GB/s, 32 GB; Tesla V100 datasheet); ``kind="M40"`` for Big Sur's.
    """
    b = _Builder()
    h = b.host("host0", "8 GPUs under one PCIe switch tree")
    sockets = [b.switch(f"socket{i}", "cpu_socket", h) for i in range(2)]
    b.link(sockets[0], sockets[1], "qpi", QPI_P2P)
    root = b.switch("pcie0", "pcie_switch", h)
    b.link(sockets[0], root, "pcie", PCIE3_X16)
    _gpu_switches(b, h, spec(kind), [root, root], 4, first=1)
    return b.build("pcie-8gpu-switch-tree", f"8 x {kind} under one PCIe 3.0 switch tree")


def pcie_8gpu_two_sockets(kind: str = "V100-PCIe") -> Cluster:
    """8 GPUs split across two CPU sockets (``pcie-8gpu-two-sockets``).

    Each socket has two PCIe switches with two GPUs each (PCIe 3.0 x16, 12 GB/s effective). GPUs 0-3
    hang off socket 0, GPUs 4-7 off socket 1; traffic between the halves crosses the QPI link, 9 GB/s
    effective for peer traffic (see the module notes), so gpu0 -> gpu4 is slower than gpu0 -> gpu1.
    Default GPUs: V100 PCIe (Tesla V100 datasheet); ``kind="M40"`` for Big Sur's.
    """
    b = _Builder()
    h = b.host("host0", "8 GPUs split across two sockets")
    sockets = [b.switch(f"socket{i}", "cpu_socket", h) for i in range(2)]
    b.link(sockets[0], sockets[1], "qpi", QPI_P2P)
    _gpu_switches(b, h, spec(kind), [sockets[0], sockets[0], sockets[1], sockets[1]], 2)
    return b.build("pcie-8gpu-two-sockets", f"8 x {kind}, four per CPU socket, PCIe 3.0 and QPI")


def pcie_8gpu_one_socket(kind: str = "V100-PCIe") -> Cluster:
    """8 GPUs on two PCIe switches of four, each switch on its own root port of socket 0 (``pcie-8gpu-one-socket``).

    GPUs 0-3 hang off switch ``pcie0``, GPUs 4-7 off ``pcie1``; each switch has an x16 cable to a root
    port of socket 0, so traffic between the halves goes switch -> socket 0's root complex -> switch
    (PCIe 3.0 x16, 12 GB/s effective on every hop). Socket 1 holds no GPU and is joined by QPI (9 GB/s
    effective). A Haswell socket forwards peer traffic between its root ports; that it does so at the
    links' rate is an assumption (the rate is platform-dependent and we have no measurement), so in this
    model the wiring differs from :func:`pcie_8gpu_switch_tree` only in where the halves meet, not in
    bandwidth. Default GPUs: V100 PCIe; ``kind="M40"`` for Big Sur's.
    """
    b = _Builder()
    h = b.host("host0", "8 GPUs on two PCIe switches of one socket")
    sockets = [b.switch(f"socket{i}", "cpu_socket", h) for i in range(2)]
    b.link(sockets[0], sockets[1], "qpi", QPI_P2P)
    _gpu_switches(b, h, spec(kind), [sockets[0], sockets[0]], 4)
    return b.build("pcie-8gpu-one-socket", f"8 x {kind} on two PCIe 3.0 switches of one CPU socket")


def pcie_4gpu(kind: str = "K40") -> Cluster:
    """A 4-GPU PCIe box with its CPU as a fifth device, as in the device-placement papers (``pcie-4gpu``).

    Mirhoseini et al. (ICML 2017; ICLR 2018 hierarchical planner) ran on one machine with an Intel Haswell
    CPU ("Haswell 2300") and up to 8 Tesla K40 GPUs, and placed ops on the CPU as well. Here: one Xeon
    E5-2699 v3 (18 Haswell cores, 2.3 GHz, 1.3 TFLOP/s fp32 with AVX2 FMA, 68 GB/s DDR4) and four K40s
    (4.29 TFLOP/s fp32, 288 GB/s, 12 GB; K40 datasheet) under one PCIe 3.0 switch (12 GB/s effective).
    The CPU device reaches its socket at its memory bandwidth.
    """
    b = _Builder()
    h = b.host("host0", "4 GPUs and the CPU")
    socket = b.switch("socket0", "cpu_socket", h)
    cpu = b.device("cpu0", spec("Xeon-E5-2699v3"), h)
    b.link(cpu, socket, "membus", CPU_MEMORY_LINK)
    sw = b.switch("pcie0", "pcie_switch", h)
    b.link(socket, sw, "pcie", PCIE3_X16)
    for i in range(4):
        b.link(sw, b.device(f"gpu{i}", spec(kind), h), "pcie", PCIE3_X16)
    return b.build("pcie-4gpu", f"Haswell CPU and 4 x {kind} under one PCIe 3.0 switch")


# The DGX-1 (V100) NVLink map: (gpu, gpu, number of NVLink 2 links). Every GPU uses its six links; the
# two quads {0..3} and {4..7} are fully connected, and GPU i is joined to GPU i+4 (the cube's edges plus
# the diagonals of two faces, as the DGX-1 white paper describes the hybrid cube-mesh).
DGX1_NVLINKS: tuple[tuple[int, int, int], ...] = (
    (0, 1, 1), (0, 2, 1), (0, 3, 2), (1, 2, 2), (1, 3, 1), (2, 3, 2),
    (4, 5, 1), (4, 6, 1), (4, 7, 2), (5, 6, 2), (5, 7, 1), (6, 7, 2),
    (0, 4, 2), (1, 5, 2), (2, 6, 1), (3, 7, 1),
)  # fmt: skip


def _dgx1_host(b: _Builder, host: str, prefix: str, memory_bytes: float | None) -> list[str]:
    """One DGX-1 (V100) into ``b``; returns the names of its four NIC switches."""
    v100 = spec("V100")
    gpus = [b.device(f"{prefix}gpu{i}", v100, host, memory_bytes) for i in range(8)]
    for x, y, n in DGX1_NVLINKS:
        b.link(gpus[x], gpus[y], "nvlink", n * NVLINK2)
    sockets = [b.switch(f"{prefix}socket{i}", "cpu_socket", host) for i in range(2)]
    b.link(sockets[0], sockets[1], "qpi", QPI_P2P)
    nics = []
    for sw_i in range(4):
        sw = b.switch(f"{prefix}pcie{sw_i}", "pcie_switch", host)
        b.link(sockets[sw_i // 2], sw, "pcie", PCIE3_X16)
        for j in range(2):
            b.link(sw, gpus[2 * sw_i + j], "pcie", PCIE3_X16)
        nic = b.switch(f"{prefix}nic{sw_i}", "nic", host)
        b.link(sw, nic, "pcie", PCIE3_X16, NIC_LATENCY_S)
        nics.append(nic)
    return nics


def dgx1_v100(memory_gb: int = 16) -> Cluster:
    """NVIDIA DGX-1 with 8 Tesla V100 SXM2 in the hybrid cube-mesh NVLink topology (``dgx1-v100``).

    GPUs: V100 SXM2, 15.7 TFLOP/s fp32, 125 TFLOP/s fp16 tensor, 900 GB/s HBM2, 16 GB (32 GB with
    ``memory_gb=32``) (Tesla V100 datasheet). NVLink 2: six links per GPU, 25 GB/s per link per direction;
    the link map is :data:`DGX1_NVLINKS` (pairs with two links get 50 GB/s; GPU pairs with no NVLink,
    such as 0 and 5, go over PCIe and, across the halves, the QPI). PCIe: two Xeon sockets, two PCIe 3.0
    switches each, two GPUs and one EDR InfiniBand NIC per switch (DGX-1 system architecture white paper).
    """
    b = _Builder()
    h = b.host("host0", "DGX-1 (V100)")
    _dgx1_host(b, h, "", memory_gb * GiB)
    return b.build("dgx1-v100", "DGX-1: 8 x V100 SXM2, hybrid cube-mesh NVLink")


def _dgx_h100_host(b: _Builder, host: str, prefix: str) -> list[str]:
    """One DGX H100 into ``b``; returns the names of its eight compute NICs."""
    h100 = spec("H100")
    nvswitch = b.switch(f"{prefix}nvswitch", "nvswitch", host)
    sockets = [b.switch(f"{prefix}socket{i}", "cpu_socket", host) for i in range(2)]
    b.link(sockets[0], sockets[1], "upi", UPI_SPR)
    nics = []
    for i in range(8):
        gpu = b.device(f"{prefix}gpu{i}", h100, host)
        b.link(gpu, nvswitch, "nvlink", NVLINK4_PER_GPU)
        # Model: GPU i and its NDR NIC share a PCIe 5.0 switch (rail-optimised wiring).
        sw = b.switch(f"{prefix}pcie{i}", "pcie_switch", host)
        b.link(sockets[i // 4], sw, "pcie", PCIE5_X16)
        b.link(sw, gpu, "pcie", PCIE5_X16)
        nic = b.switch(f"{prefix}nic{i}", "nic", host)
        b.link(sw, nic, "pcie", PCIE5_X16, NIC_LATENCY_S)
        nics.append(nic)
    return nics


def dgx_h100() -> Cluster:
    """NVIDIA DGX H100: 8 H100 SXM5 joined by NVSwitch (``dgx-h100``).

    GPUs: H100 SXM5, 67 TFLOP/s fp32, 989 TFLOP/s dense fp16/bf16 tensor, 3.35 TB/s HBM3, 80 GB
    (H100 datasheet). NVLink 4: 18 links per GPU into the NVSwitch fabric, 450 GB/s per direction per GPU
    (900 GB/s bidirectional); the four NVSwitch chips are modelled as one non-blocking switch, so any GPU
    pair gets 450 GB/s. Two Sapphire Rapids sockets (UPI), PCIe 5.0 (50 GB/s effective), one 400 Gb/s NDR
    NIC per GPU.
    """
    b = _Builder()
    h = b.host("host0", "DGX H100")
    _dgx_h100_host(b, h, "")
    return b.build("dgx-h100", "DGX H100: 8 x H100 SXM5, NVSwitch")


# -- several hosts --------------------------------------------------------------------------------
def infiniband_cluster(hosts: int = 2, host_type: str = "dgx1-v100") -> Cluster:
    """``hosts`` servers of 8 GPUs joined by an InfiniBand fat tree (``2x8-v100-ib``, ``16x8-h100-ib``, ...).

    ``host_type="dgx1-v100"``: DGX-1 hosts (see :func:`dgx1_v100`) with four EDR ports each (100 Gb/s =
    12.5 GB/s per direction); ``"dgx-h100"``: DGX H100 hosts (see :func:`dgx_h100`) with eight NDR ports
    (400 Gb/s = 50 GB/s). Every NIC links to one switch standing for a non-blocking (full-bisection)
    fabric, 1 µs per hop. GPUs send with GPUDirect RDMA: GPU -> PCIe switch -> NIC -> fabric -> NIC ->
    PCIe switch -> GPU. Devices are named ``h{i}/gpu{j}``.
    """
    if hosts < 1:
        raise ConfigurationError(f"infiniband_cluster: hosts must be >= 1, got {hosts}")
    builders: dict[str, tuple[Callable[..., list[str]], float, str]] = {
        "dgx1-v100": (lambda b, h, p: _dgx1_host(b, h, p, None), IB_EDR, "v100"),
        "dgx-h100": (_dgx_h100_host, IB_NDR, "h100"),
    }
    if host_type not in builders:
        raise ConfigurationError(f"infiniband_cluster: unknown host_type {host_type!r}; known: {', '.join(builders)}")
    build_host, port_bw, short = builders[host_type]
    b = _Builder()
    fabric = b.switch("ib", "network", None)
    for i in range(hosts):
        h = b.host(f"h{i}", host_type)
        for nic in build_host(b, h, f"h{i}/"):
            b.link(nic, fabric, "infiniband", port_bw)
    name = f"{hosts}x8-{short}-ib"
    return b.build(name, f"{hosts} x {host_type} over InfiniBand")


def ethernet_cluster(hosts: int = 4, gpus: int = 8, gbit: float = 10, kind: str = "V100-PCIe") -> Cluster:
    """``hosts`` PCIe servers of ``gpus`` GPUs each on commodity Ethernet through one switch
    (``4x8-v100-10gbe``, ``8x1-v100-10gbe``, ``8x1-v100-1gbe``).

    Each host: one Xeon E5-2699 v3 socket whose CPU is a device too (``h{i}/cpu0``, 68 GB/s to its socket:
    a parameter server, as the talk's CPU servers), GPUs under PCIe 3.0 switches of four on that socket
    (one switch with ``gpus <= 4``; 12 GB/s effective per hop), and one Ethernet NIC on the socket's PCIe
    (x8 at 12 GB/s is far above the wire). NICs link at ``gbit`` Gb/s to one non-blocking switch:
    ``gbit`` x 0.118 GB/s per direction (TCP goodput, module notes), 25 µs per NIC-switch hop. A GPU's
    traffic to another host goes GPU -> PCIe -> socket -> NIC -> switch -> NIC -> socket -> PCIe -> GPU
    (staged through host memory: no RDMA). Default GPUs: V100 PCIe (Tesla V100 datasheet). Devices are
    named ``h{i}/gpu{j}``.
    """
    if hosts < 1 or gpus < 1 or not gbit > 0:
        raise ConfigurationError(f"ethernet_cluster: expected hosts >= 1, gpus >= 1 and gbit > 0, got {hosts}, {gpus}, {gbit}")
    b = _Builder()
    ethernet = b.switch("eth", "network", None)
    for i in range(hosts):
        h, prefix = b.host(f"h{i}", f"{gpus} x {kind} on PCIe, {gbit:g} GbE"), f"h{i}/"
        socket = b.switch(f"{prefix}socket0", "cpu_socket", h)
        switches = -(-gpus // 4)
        _gpu_switches(b, h, spec(kind), [socket] * switches, gpus // switches, prefix=prefix)
        # The CPU after the GPUs: with as many CPUs as GPUs, the GPUs are the first kind, the replicas'.
        b.link(b.device(f"{prefix}cpu0", spec("Xeon-E5-2699v3"), h, kind="cpu"), socket, "membus", CPU_MEMORY_LINK)
        nic = b.switch(f"{prefix}nic0", "nic", h)
        b.link(socket, nic, "pcie", PCIE3_X16, NIC_LATENCY_S)
        b.link(nic, ethernet, "ethernet", gbit * ETHERNET_PER_GBIT, ETHERNET_LATENCY_S)
    short = kind.split("-")[0].lower()
    return b.build(f"{hosts}x{gpus}-{short}-{gbit:g}gbe", f"{hosts} x {gpus} {kind} over {gbit:g} Gb Ethernet")


def accelerators_with_cpu(
    accelerators: int = 6, cpus: int = 1, accelerator_memory_bytes: float = 16 * GiB
) -> Cluster:
    """Accelerators plus CPUs on one host, the setting of the dnn-partitioning inputs (``accelerators-cpu``).

    Tarnawski et al. (NeurIPS 2020) state device counts (``maxFPGAs``, ``maxCPUs``) and accelerator memory
    (``maxSizePerFPGA``) per input file, and give every time as measured per device category, so only
    the counts and the memory matter there. Accelerators (category ``accelerator``) carry V100 SXM2
    figures since the layer graphs were GPU-profiled; CPUs carry Xeon E5-2699 v3 figures. Each device
    sits on a PCIe 3.0 x16 link (12 GB/s) to the host's socket.
    """
    v100 = spec("V100")
    acc = DeviceSpec("accelerator", "accelerator", v100.peak_flops, v100.memory_bandwidth, accelerator_memory_bytes, v100.op_overhead_s)
    b = _Builder()
    h = b.host("host0", "accelerators and CPUs")
    socket = b.switch("socket0", "cpu_socket", h)
    for i in range(accelerators):
        b.link(socket, b.device(f"acc{i}", acc, h), "pcie", PCIE3_X16)
    for i in range(cpus):
        b.link(socket, b.device(f"cpu{i}", spec("Xeon-E5-2699v3"), h, kind="cpu"), "membus", CPU_MEMORY_LINK)
    return b.build("accelerators-cpu", f"{accelerators} accelerators and {cpus} CPU(s)")


# -- this machine ---------------------------------------------------------------------------------
def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), what the ``local`` preset counts as workers."""
    return len(os.sched_getaffinity(0))


def local(workers: int | None = None) -> Cluster:
    """The devices of this machine (``local``): its CUDA GPUs when present, else CPU worker processes.

    GPUs are listed with ``nvidia-smi`` (no torch import); a GPU whose name contains a kind of
    :data:`placement.specs.DEVICE_SPECS` (``H100``, ``A100``, ``V100``) gets that kind's datasheet figures,
    any other gets V100 figures under its own name. The GPUs are put under one PCIe switch (12 GB/s): the
    real topology is not probed.

    Without GPUs, ``workers`` CPU worker processes (default: the CPU cores this process may use) stand in
    for devices, each one thread: kind and category ``cpu``, peak = clock x FLOPs per cycle of the
    vector unit read from ``/proc/cpuinfo`` (64 with AVX-512, 32 with AVX2+FMA, else 8), memory bandwidth
    an assumed 10 GB/s per worker, memory the machine's RAM shared evenly. Workers exchange tensors
    through host memory (torch.distributed over gloo), modelled as a 5 GB/s link per worker with 20 µs
    latency into one ``shm`` switch; these are assumptions for the profiled cost model to calibrate.
    Passing ``workers`` asks for CPU workers even on a machine with GPUs.
    """
    gpus = _nvidia_gpus()
    b = _Builder()
    h = b.host("localhost", "this machine")
    if gpus and workers is None:
        sw = b.switch("pcie0", "pcie_switch", h)
        for i, (name, memory) in enumerate(gpus):
            kind = next((k for k in ("H100", "A100", "V100") if k in name.upper()), None)
            base = spec(kind) if kind else spec("V100")
            b.link(sw, b.device(f"cuda:{i}", base, h, memory or None, kind=kind or name), "pcie", PCIE3_X16)
        return b.build("local", f"{len(gpus)} CUDA GPU(s) of this machine")
    n = workers or usable_cores()
    ghz, per_cycle = _cpu_clock_and_width()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    fp32 = ghz * 1e9 * per_cycle
    worker = DeviceSpec("cpu", "cpu", {"float32": fp32, "float64": fp32 / 2}, 10 * GB, ram / n, CPU_OP_OVERHEAD_S)
    shm = b.switch("shm", "memory", h)
    for i in range(n):
        b.links.append(Link(b.device(f"cpu{i}", worker, h), shm, "shm", 5 * GB, 20e-6))
    return b.build("local", f"{n} CPU worker process(es) standing in for devices")


def _nvidia_gpus() -> list[tuple[str, float]]:
    """(name, memory bytes) of each CUDA GPU nvidia-smi lists; empty without a driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, mib = line.rpartition(",")
        try:
            gpus.append((name.strip(), float(mib) * 2**20))
        except ValueError:
            continue
    return gpus


def _cpu_clock_and_width() -> tuple[float, int]:
    """(GHz, fp32 FLOPs per cycle per core) from /proc/cpuinfo; (2.0, 8) when it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 2.0, 8
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE)]
    flags_line = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    width = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    return (max(mhz) / 1000 if mhz else 2.0), width


# -- registry -------------------------------------------------------------------------------------
_PRESETS: dict[str, tuple[Callable[..., Cluster], dict[str, Any]]] = {
    "pcie-8gpu-switch-tree": (pcie_8gpu_switch_tree, {}),
    "pcie-8gpu-two-sockets": (pcie_8gpu_two_sockets, {}),
    "pcie-8gpu-one-socket": (pcie_8gpu_one_socket, {}),
    "pcie-4gpu": (pcie_4gpu, {}),
    "dgx1-v100": (dgx1_v100, {}),
    "dgx-h100": (dgx_h100, {}),
    "2x8-v100-ib": (infiniband_cluster, {"hosts": 2, "host_type": "dgx1-v100"}),
    "16x8-v100-ib": (infiniband_cluster, {"hosts": 16, "host_type": "dgx1-v100"}),
    "2x8-h100-ib": (infiniband_cluster, {"hosts": 2, "host_type": "dgx-h100"}),
    "16x8-h100-ib": (infiniband_cluster, {"hosts": 16, "host_type": "dgx-h100"}),
    "4x8-v100-10gbe": (ethernet_cluster, {"hosts": 4, "gpus": 8, "gbit": 10}),
    "8x1-v100-10gbe": (ethernet_cluster, {"hosts": 8, "gpus": 1, "gbit": 10}),
    "8x1-v100-1gbe": (ethernet_cluster, {"hosts": 8, "gpus": 1, "gbit": 1}),
    "accelerators-cpu": (accelerators_with_cpu, {}),
    "local": (local, {}),
}


def cluster_presets() -> list[str]:
    """Names :meth:`Cluster.preset` accepts."""
    return list(_PRESETS)


def build_preset(name: str, **options: Any) -> Cluster:
    """Build the preset ``name``; ``options`` override its builder's keyword arguments."""
    try:
        builder, defaults = _PRESETS[name]
    except KeyError:
        raise ConfigurationError(f"no cluster preset {name!r}; presets: {', '.join(_PRESETS)}") from None
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigurationError(f"cluster preset {name!r} takes no option(s) {unknown}; options: {', '.join(accepted)}")
    return builder(**{**defaults, **options})


provide_presets(build_preset)
