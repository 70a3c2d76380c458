"""Several hosts on one Linux machine: :class:`Hosts`, network namespaces joined by a bridge.

``Hosts(n)`` makes, for host ``i``, a network namespace ``{prefix}-{pid}-{k}-h{i}`` (the process id and
a counter of this process's fixtures keep parallel runs apart) with ``lo`` up and an ``eth0`` at
``10.A.B.(i+1)/24``, the host's end of a veth pair whose other end is a port of a bridge in a namespace
of its own, ``{prefix}-{pid}-{k}-net``. Nothing is made in the caller's namespace: a host reaches the
other hosts and nothing else (no route leaves the subnet), and removing the namespaces removes every
link. The subnet ``10.A.B.0/24`` is one that no route of the caller's namespace covers.

Each host's link is shaped (:mod:`runtime.hosts.net`): ``bandwidth`` bytes/s each way, ``latency_s``
of delay each way, where the kernel can delay (``netem``); :meth:`Hosts.cluster` is the same topology
as a placement cluster (:mod:`runtime.hosts.topology`).

Commands run in a host through ``ip netns exec`` (:meth:`Hosts.command`, :meth:`Hosts.popen`,
:meth:`Hosts.run`), each in a process group of its own, with :data:`GLOO_IFNAME_ENV` naming the host's
interface: gloo picks its address from the machine's host name otherwise, which is the same in every
namespace and resolves to an address no namespace has.

Cleanup. :meth:`Hosts.close` kills every process in the namespaces (those it started, their process
groups, and any other: ``ip netns pids``), then deletes the namespaces. It runs when the ``with`` block
ends, however it ends (an exception, ``KeyboardInterrupt``), on SIGTERM (a handler that cleans up, then
lets the signal do what it did before), and at interpreter exit (``atexit``). A SIGKILL leaves the
namespaces behind: :func:`remove_stale` deletes those of processes that no longer exist.
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from graphc.ir.errors import ConfigurationError, RuntimeFault
from placement.cluster import Cluster
from runtime.hosts import net
from runtime.hosts.topology import VETH_LATENCY_S, hosts_cluster

PREFIX = "graphc"
GLOO_IFNAME_ENV = "GLOO_SOCKET_IFNAME"
INTERFACE = "eth0"
# SIGTERM, then this long, then SIGKILL, for a process group a fixture started.
KILL_GRACE_S = 2.0

_counter = itertools.count()
_live: list[Hosts] = []
_live_lock = threading.RLock()  # reentrant: the SIGTERM handler may run while the main thread holds it
_previous_sigterm: Any = None


@dataclass(frozen=True)
class Host:
    """One namespace host.

    Attributes:
        index: its position, 0 ... n - 1 (``graphc run --node-rank``).
        name: ``h{index}``, the host of its devices in :meth:`Hosts.cluster`.
        namespace: its network namespace.
        address: its IPv4 address on the bridge.
    """

    index: int
    name: str
    namespace: str
    address: str


class Hosts:
    """``n`` hosts as network namespaces joined by shaped links (module docstring); a context manager.

    Args:
        n: how many hosts (at least 1).
        bandwidth: bytes/s of each host's link, each way; None leaves the links unshaped.
        latency_s: delay of each host's link, each way (a transfer between hosts crosses two links);
            refused with a :class:`~graphc.ir.errors.ConfigurationError` where the kernel cannot delay.
        workers: CPU worker ranks per host in :meth:`cluster`.
        prefix: the first part of every namespace's name.

    ``with Hosts(2, bandwidth=12.5e6) as hosts: hosts.run(hosts[0], ["python", "-c", "..."])``.
    Raises :class:`~graphc.ir.errors.ConfigurationError` where namespaces cannot be made
    (:func:`runtime.hosts.net.why_unavailable`).
    """

    def __init__(self, n: int, *, bandwidth: float | None = 125e6, latency_s: float = 0.0, workers: int = 1, prefix: str = PREFIX) -> None:
        if n < 1 or workers < 1:
            raise ConfigurationError(f"Hosts: needs n >= 1 hosts of workers >= 1, got n={n}, workers={workers}")
        if bandwidth is not None and not bandwidth > 0:
            raise ConfigurationError(f"Hosts: bandwidth is bytes/s and must be positive (or None: unshaped), got {bandwidth}")
        if not latency_s >= 0:
            raise ConfigurationError(f"Hosts: latency_s must be >= 0, got {latency_s}")
        self.n, self.bandwidth, self.latency_s, self.workers = n, bandwidth, latency_s, workers
        self.stem = f"{prefix}-{os.getpid()}-{next(_counter)}"
        self.switch = f"{self.stem}-net"
        self.hosts: list[Host] = []
        self.made: list[str] = []  # namespaces made so far, removed by close()
        self.processes: list[subprocess.Popen] = []
        self.netem_missing: str | None = None
        self.closed = False

    # -- making and removing -------------------------------------------------------------------
    def __enter__(self) -> Self:
        reason = net.why_unavailable()
        if reason:
            raise ConfigurationError(f"Hosts: cannot make network namespaces: {reason}")
        _register(self)
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make(self) -> None:
        subnet = free_subnet(os.getpid() + 7919 * int(self.stem.rsplit("-", 1)[1]))
        self._namespace(self.switch)
        net.run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"], "making the bridge")
        net.run(["ip", "-n", self.switch, "link", "set", "br0", "up"], "starting the bridge")
        for i in range(self.n):
            host = Host(i, f"h{i}", f"{self.stem}-h{i}", str(subnet.network_address + i + 1))
            self._namespace(host.namespace)
            port = f"p{i}"
            net.run(
                ["ip", "link", "add", INTERFACE, "netns", host.namespace, "type", "veth", "peer", "name", port, "netns", self.switch],
                f"making the link of {host.name}",
            )
            net.run(["ip", "-n", self.switch, "link", "set", port, "master", "br0", "up"], f"joining {host.name} to the bridge")
            net.run(["ip", "-n", host.namespace, "addr", "add", f"{host.address}/{subnet.prefixlen}", "dev", INTERFACE], f"addressing {host.name}")
            for device in ("lo", INTERFACE):
                net.run(["ip", "-n", host.namespace, "link", "set", device, "up"], f"starting {device} of {host.name}")
            if i == 0:
                self.netem_missing = net.netem_missing(host.namespace, INTERFACE)
                if self.latency_s > 0 and self.netem_missing:
                    raise ConfigurationError(
                        f"Hosts: latency_s={self.latency_s:g} cannot be shaped here: the kernel has no netem queue "
                        f"(tc said {self.netem_missing!r}; load sch_netem or use a kernel with it). Bandwidth (tbf) can be "
                        "shaped: pass latency_s=0 to run with the links' own latency"
                    )
            net.shape(host.namespace, INTERFACE, self.bandwidth, self.latency_s)
            net.shape(self.switch, port, self.bandwidth, self.latency_s)
            self.hosts.append(host)

    def _namespace(self, name: str) -> None:
        net.run(["ip", "netns", "add", name], f"making network namespace {name}")
        self.made.append(name)

    def close(self) -> None:
        """Kill every process in the hosts and delete every namespace (and so every link) this made.
        Safe to call more than once, and from a signal handler."""
        if self.closed:
            return
        self.closed = True
        for process in self.processes:
            kill_group(process)
        for name in reversed(self.made):
            _remove_namespace(name)
        _unregister(self)

    # -- using -------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this made (the hosts' and the bridge's)."""
        return list(self.made)

    def command(self, host: Host, argv: list[str]) -> list[str]:
        """``argv`` run in ``host`` (``ip netns exec``)."""
        return ["ip", "netns", "exec", host.namespace, *argv]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a command in a host: this process's, with gloo on the host's interface."""
        return {**os.environ, GLOO_IFNAME_ENV: INTERFACE, **(extra or {})}

    def popen(self, host: Host, argv: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in ``host`` in a process group of its own (killed by :meth:`close`); ``env`` adds
        to :meth:`env`; ``kwargs`` go to :class:`subprocess.Popen`."""
        self._check_open()
        process = subprocess.Popen(self.command(host, argv), env=self.env(env), start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def run(self, host: Host, argv: list[str], timeout_s: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host`` to its end and return it (text output captured); killed, and a
        :class:`~graphc.ir.errors.RuntimeFault` raised, after ``timeout_s``."""
        return self.run_all({host: argv}, timeout_s, env)[0]

    def run_all(
        self, commands: dict[Host, list[str]], timeout_s: float = 60.0, env: dict[str, str] | None = None
    ) -> list[subprocess.CompletedProcess[str]]:
        """Run each host's command at once (``{hosts[0]: argv0, hosts[1]: argv1}``) and wait for all; their
        results in the order given. After ``timeout_s`` every one still running is killed and a
        :class:`~graphc.ir.errors.RuntimeFault` names the hosts whose command had not ended."""
        started = {
            host: self.popen(host, argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for host, argv in commands.items()
        }
        outputs: dict[Host, tuple[str, str]] = {}

        def collect(host: Host, process: subprocess.Popen) -> None:
            outputs[host] = process.communicate()

        readers = [threading.Thread(target=collect, args=item, daemon=True) for item in started.items()]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + timeout_s
        for reader in readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        late = [host.name for host, process in started.items() if process.poll() is None]
        if late:
            for process in started.values():
                kill_group(process)
            raise RuntimeFault(f"hosts: the command on {', '.join(late)} was still running after {timeout_s:g} s and was killed")
        return [subprocess.CompletedProcess(p.args, p.returncode, *outputs[h]) for h, p in started.items()]

    def kill(self, host: Host) -> list[int]:
        """SIGKILL every process running in ``host`` (a host that dies); returns their ids."""
        pids = net.pids_in(host.namespace)
        for pid in pids:
            _signal_pid(pid, signal.SIGKILL)
        return pids

    def set_link(self, host: Host, up: bool) -> None:
        """Cut (``up=False``) or restore ``host``'s link, at the bridge's end."""
        state = "up" if up else "down"
        net.run(["ip", "-n", self.switch, "link", "set", f"p{host.index}", state], f"setting the link of {host.name} {state}")

    def traffic(self, host: Host) -> int:
        """Bytes ``host``'s link has carried so far, both ways (the bridge port's counters)."""
        shown = json.loads(net.run(["ip", "-j", "-s", "-n", self.switch, "link", "show", f"p{host.index}"], "reading link counters").stdout)
        stats = shown[0]["stats64"]
        return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])

    def cluster(self, name: str = "") -> Cluster:
        """These hosts as a placement cluster (:func:`runtime.hosts.topology.hosts_cluster`)."""
        if self.bandwidth is None:
            raise ConfigurationError("Hosts.cluster: the links are unshaped, so their bandwidth is unknown; pass bandwidth= to Hosts")
        return hosts_cluster(self.n, self.workers, self.bandwidth, self.latency_s + VETH_LATENCY_S, name)

    def save_cluster(self, path: str | Path, name: str = "") -> Path:
        """Write :meth:`cluster` as JSON (for ``graphc plan -c``); returns the path."""
        self.cluster(name).save(path)
        return Path(path)

    def describe(self) -> dict[str, Any]:
        """The hosts and links as a JSON-able dict: names, namespaces, addresses, shaping, what was not shaped."""
        return {
            "hosts": [vars(h) for h in self.hosts],
            "bridge_namespace": self.switch,
            "bandwidth_bytes_per_s": self.bandwidth,
            "latency_s": self.latency_s,
            "netem_missing": self.netem_missing,
        }

    def __repr__(self) -> str:
        return f"Hosts({json.dumps(self.describe())})"

    def _check_open(self) -> None:
        if self.closed:
            raise ConfigurationError("Hosts: these hosts were removed (the with block ended); make new ones")


def free_subnet(seed: int) -> ipaddress.IPv4Network:
    """A ``10.A.B.0/24`` that no route of this namespace covers, picked from ``seed`` (so that two
    processes are unlikely to pick the same one, though each fixture's namespaces are apart anyway)."""
    routes = json.loads(net.run(["ip", "-j", "-4", "route", "show", "table", "all"], "listing routes").stdout or "[]")
    taken = [ipaddress.ip_network(r["dst"], strict=False) for r in routes if r.get("dst", "default") != "default"]
    for k in range(200 * 256):
        index = (seed + k) % (200 * 256)
        subnet = ipaddress.ip_network(f"10.{50 + index // 256}.{index % 256}.0/24")
        if not any(subnet.overlaps(t) for t in taken):
            return subnet
    raise RuntimeFault("hosts: every 10.50-249.x.0/24 subnet is covered by a route here; remove some routes")


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """Delete the namespaces named by a fixture of a process that no longer exists (one killed with
    SIGKILL); returns their names."""
    removed = []
    for name in net.namespaces():
        parts = name.split("-")
        if len(parts) >= 4 and parts[0] == prefix and parts[1].isdigit() and not _alive(int(parts[1])):
            _remove_namespace(name)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(process: subprocess.Popen) -> None:
    """End ``process`` and its process group (one :meth:`Hosts.popen` made): SIGTERM to ``process``'s group, SIGKILL :data:`KILL_GRACE_S` later if it still runs."""
    if process.poll() is not None:
        _signal_group(process.pid, signal.SIGKILL)  # its group may outlive it
        return
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _remove_namespace(name: str) -> None:
    """Kill what still runs in namespace ``name`` and delete it."""
    for pid in net.pids_in(name):
        _signal_pid(pid, signal.SIGKILL)
    net.run(["ip", "netns", "del", name], f"deleting network namespace {name}", check=False)


# -- cleanup on SIGTERM and at exit ----------------------------------------------------------------


def _register(hosts: Hosts) -> None:
    global _previous_sigterm
    with _live_lock:
        _live.append(hosts)
    if _previous_sigterm is None and threading.current_thread() is threading.main_thread():
        _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)


def _unregister(hosts: Hosts) -> None:
    with _live_lock:
        if hosts in _live:
            _live.remove(hosts)


def _close_all() -> None:
    with _live_lock:
        live = list(_live)
    for hosts in live:
        hosts.close()


def _on_sigterm(signum: int, frame: Any) -> None:
    """Remove every live fixture's hosts, then do what SIGTERM did before."""
    global _previous_sigterm
    _close_all()
    previous, _previous_sigterm = _previous_sigterm, None
    signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        os.kill(os.getpid(), signum)


atexit.register(_close_all)
