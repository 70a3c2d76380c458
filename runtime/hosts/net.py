"""The ``ip`` and ``tc`` commands behind :class:`~runtime.hosts.Hosts`: namespaces, veth pairs, a bridge,
and shaping a link.

Shaping. A host's link is one veth pair: the host's end (``eth0`` in the host's namespace) and the
switch's end (a port of the bridge). Each end's egress queue shapes one direction, so shaping both
ends gives a full-duplex link of ``rate`` each way, as :class:`placement.cluster.Link` models it:

* bandwidth, with ``tbf`` (token bucket): ``rate`` bits/s, a bucket of ``burst`` bytes (at least
  :data:`MIN_BURST_BYTES`, since a veth hands the queue segmentation-offloaded packets of up to 64 KiB,
  and at least 1 ms of traffic at the rate, so the timer's granularity does not cap the rate), and a
  queue of at most :data:`QUEUE_LATENCY` of traffic;
* delay, with ``netem`` (``delay``), the root of the queue with the ``tbf`` under it. Kernels built
  without ``sch_netem`` refuse it ("Specified qdisc kind is unknown"): :func:`netem_missing` says so and
  a delay is then refused (:class:`~graphc.ir.errors.ConfigurationError`), never imitated.

A transfer between two hosts crosses the sender's link and the receiver's, so its one-way delay is
twice a link's and its bandwidth a link's: the route of :func:`runtime.hosts.topology.hosts_cluster`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from graphc.ir.errors import RuntimeFault

MIN_BURST_BYTES = 64 * 1024
QUEUE_LATENCY = "20ms"
# The message with which tc refuses a queueing discipline the kernel does not have.
UNKNOWN_QDISC = "unknown"


def why_unavailable() -> str | None:
    """Why network namespaces cannot be made here (a sentence for a skip), or None when they can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux's; this is {sys.platform}"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CAP_NET_ADMIN); run as root, as CI does"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found (install iproute2)"
    return None


def run(argv: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an ``ip``/``tc`` command; a failure (when ``check``) raises a
    :class:`~graphc.ir.errors.RuntimeFault` saying ``what`` was being done and the command's message."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeFault(f"hosts: {what} failed: `{' '.join(argv)}` said {(done.stderr or done.stdout).strip()!r}")
    return done


def namespaces() -> list[str]:
    """The names of the network namespaces ``ip netns`` lists."""
    listed = run(["ip", "netns", "list"], "listing network namespaces").stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def pids_in(namespace: str) -> list[int]:
    """The processes running in ``namespace``."""
    listed = run(["ip", "netns", "pids", namespace], f"listing the processes of {namespace}", check=False).stdout
    return [int(p) for p in listed.split() if p.isdigit()]


def tbf_arguments(rate_bytes: float) -> list[str]:
    """The ``tbf`` parameters of a link of ``rate_bytes`` bytes/s (module docstring)."""
    burst = max(MIN_BURST_BYTES, int(rate_bytes / 1000))
    return ["tbf", "rate", f"{int(rate_bytes * 8)}bit", "burst", str(burst), "latency", QUEUE_LATENCY]


def shape(namespace: str, device: str, rate_bytes: float | None, delay_s: float) -> None:
    """Shape the egress of ``device`` in ``namespace``: ``rate_bytes`` bytes/s (None: unshaped) and
    ``delay_s`` seconds of delay (0: none; netem must exist, see :func:`netem_missing`)."""
    tc = ["tc", "-n", namespace, "qdisc", "add", "dev", device]
    what = f"shaping {device} of {namespace}"
    if delay_s > 0:
        run([*tc, "root", "handle", "1:", "netem", "delay", f"{delay_s * 1e6:.0f}us"], what)
        if rate_bytes is not None:
            run([*tc, "parent", "1:1", "handle", "10:", *tbf_arguments(rate_bytes)], what)
    elif rate_bytes is not None:
        run([*tc, "root", *tbf_arguments(rate_bytes)], what)


def netem_missing(namespace: str, device: str) -> str | None:
    """tc's message when the kernel has no ``netem`` (delay and loss cannot be shaped), else None.

    Tries it once on ``device`` in ``namespace`` (an unshaped link) and removes it again."""
    done = run(["tc", "-n", namespace, "qdisc", "add", "dev", device, "root", "netem", "delay", "1ms"], "", check=False)
    if done.returncode == 0:
        run(["tc", "-n", namespace, "qdisc", "del", "dev", device, "root"], f"removing the netem probe from {device}")
        return None
    message = (done.stderr or done.stdout).strip()
    if UNKNOWN_QDISC not in message.lower():
        raise RuntimeFault(f"hosts: probing netem on {device} of {namespace} failed: tc said {message!r}")
    return message
