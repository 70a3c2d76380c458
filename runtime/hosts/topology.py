"""Namespace hosts as a placement :class:`~placement.cluster.Cluster`, so that plans predict them.

Each host ``h{i}`` holds ``workers`` CPU worker processes ``h{i}/cpu{j}``, the devices of the ``local``
preset (:func:`placement.presets.local`: its figures for a worker and for the shared-memory link to the
host's ``h{i}/shm`` switch). Host ``i``'s veth pair is an ``ethernet`` link from ``h{i}/shm`` to one
``net`` switch (the bridge), of the shaped bandwidth each way and latency ``latency_s``; a transfer
between hosts crosses two of them:

    t(h0/cpu0 -> h1/cpu0, n bytes) = 2 x 20 µs (shm) + 2 x latency_s + n / bandwidth

``latency_s`` is the link's shaped delay plus :data:`VETH_LATENCY_S`, an assumed figure for the
kernel's own path through a veth pair and a bridge (tens of microseconds on a loaded 2-core machine;
not measured per run).
"""

from __future__ import annotations

import dataclasses

from placement.cluster import Cluster, Host, Link, Switch
from placement.presets import local

VETH_LATENCY_S = 25e-6


def hosts_cluster(hosts: int, workers: int, bandwidth: float, latency_s: float, name: str = "") -> Cluster:
    """``hosts`` hosts of ``workers`` CPU workers each, joined by ethernet links of ``bandwidth`` bytes/s
    each way and ``latency_s`` (module docstring); named ``name`` (default ``"{hosts}x{workers}-netns"``)."""
    base = local(workers)
    worker = base.device("cpu0")
    shm_link = next(link for link in base.links if link.a == "cpu0")
    devices, links, switches, machines = [], [], [Switch("net", "network", None)], []
    for i in range(hosts):
        host = f"h{i}"
        machines.append(Host(host, f"network namespace {i}"))
        shm = Switch(f"{host}/shm", "memory", host)
        switches.append(shm)
        for j in range(workers):
            device = dataclasses.replace(worker, name=f"{host}/cpu{j}", host=host)
            devices.append(device)
            links.append(dataclasses.replace(shm_link, a=device.name, b=shm.name, name=""))
        links.append(Link(shm.name, "net", "ethernet", bandwidth, latency_s))
    name = name or f"{hosts}x{workers}-netns"
    description = f"{hosts} network-namespace host(s) of {workers} CPU worker(s), {bandwidth * 8 / 1e6:g} Mbit/s links"
    return Cluster(name, devices, links, switches, machines, description)
