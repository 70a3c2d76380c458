"""Clusters: devices, the hosts they sit in, and the topology of links between them.

A :class:`Cluster` is a set of :class:`Device` records (GPUs, CPUs, custom accelerators; kinds may be
mixed), the :class:`Host` machines they belong to, the :class:`Switch` points of the interconnect (PCIe
switches, CPU sockets, NVSwitches, NICs, the network fabric) and the :class:`Link` records joining
devices and switches. Every link has a bandwidth per direction and a latency; a full-duplex link moves
data both ways at once at full bandwidth, a half-duplex one shares it.

Routes. The route between two devices is the cheapest path in the topology under the per-hop weight
``latency + 1 MB / bandwidth`` (so a direct NVLink beats a trip up and down a PCIe tree, and fewer,
faster hops win). A route never passes *through* another device (peer copies do not bounce through a
third GPU), unless the topology leaves no other way, as in a ring of GPUs joined only by NVLink. Routes
are computed with networkx shortest paths, one single-source search per source device, and cached.
A route's time for ``n`` bytes is ``sum of latencies + n / bottleneck bandwidth`` (a transfer streams
through every link at once at the pace of the slowest); the transfer between a device and itself is
free.

Units: FLOP/s, bytes/s, bytes, seconds (``*_s`` fields).

Clusters are saved as JSON with a schema name and version and validated on load; every error names the
bad field (``devices[2].memory_bytes: expected a positive number, got -1``).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from graphc.ir.jsonfile import check_header, read_json, write_json
from placement.errors import ArgumentTypeError, ClusterFormatError, PlacementError

SCHEMA = "graphc.cluster"
SCHEMA_VERSION = 1

CATEGORIES = ("gpu", "cpu", "accelerator")

# Bytes of the message the route search prices a hop for: ``latency + ROUTE_REFERENCE_BYTES / bandwidth``.
ROUTE_REFERENCE_BYTES = 1e6


#: What :meth:`Cluster.preset` calls: ``build(name, **options) -> Cluster``, set by :mod:`placement.presets`.
_preset_builder: Callable[..., Cluster] | None = None


def provide_presets(build: Callable[..., Cluster]) -> None:
    """Make ``build`` the builder of :meth:`Cluster.preset` (called once, by :mod:`placement.presets`)."""
    global _preset_builder
    _preset_builder = build


@dataclass
class Device:
    """One device a node can be placed on.

    Attributes:
        name: unique name in the cluster (``gpu3``, ``h1/gpu0``, ``cpu0``).
        kind: the device model (``V100``, ``H100``, ``cpu``); measured times with this label apply as is.
        category: ``"gpu"``, ``"cpu"`` or ``"accelerator"``; measured times labelled with the category
            apply when none match the kind.
        host: name of the :class:`Host` the device sits in.
        peak_flops: peak FLOP/s per dtype name (``{"float32": 15.7e12, "float16": 125e12}``).
        memory_bandwidth: device-memory bandwidth, bytes/s.
        memory_bytes: memory capacity, bytes.
        op_overhead_s: the least time of one op on the device (kernel launch, framework), seconds.
    """

    name: str
    kind: str
    category: str
    host: str
    peak_flops: dict[str, float]
    memory_bandwidth: float
    memory_bytes: float
    op_overhead_s: float = 5e-6

    def speed_key(self) -> tuple:
        """What the cost model prices this device by: two devices with equal keys run every node in the
        same time (kind, category, peaks, memory bandwidth, per-op overhead)."""
        return (self.kind, self.category, tuple(sorted(self.peak_flops.items())), self.memory_bandwidth, self.op_overhead_s)

    def peak(self, dtype: str = "float32") -> float:
        """Peak FLOP/s for ``dtype``; a dtype the device lacks runs at its ``float32`` rate."""
        flops = self.peak_flops.get(dtype)
        if flops is None:
            flops = self.peak_flops.get("float32")
        if flops is None:
            flops = max(self.peak_flops.values())
        return flops


@dataclass
class Host:
    """A machine holding devices (its devices name it in :attr:`Device.host`)."""

    name: str
    description: str = ""


@dataclass
class Switch:
    """A point of the interconnect that is not a device.

    Attributes:
        name: unique among devices and switches.
        kind: what it is: ``pcie_switch``, ``cpu_socket``, ``nvswitch``, ``nic``, ``network``, ``memory``...
        host: the host it belongs to, or None for a network shared by hosts.
    """

    name: str
    kind: str
    host: str | None = None


@dataclass
class Link:
    """A physical link between two topology points (devices or switches).

    Attributes:
        a, b: the names of its ends.
        kind: ``nvlink``, ``pcie``, ``qpi``, ``upi``, ``infiniband``, ``shm``, ... (free text).
        bandwidth: bytes/s in each direction (several parallel lanes count as one link of their sum).
        latency_s: seconds from the first byte sent to the first byte received over this link.
        duplex: True when both directions run at full bandwidth at once (each direction is its own
            resource in the simulator); False when they share it.
        name: unique name; defaults to ``"a--b"``.
    """

    a: str
    b: str
    kind: str
    bandwidth: float
    latency_s: float = 0.0
    duplex: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{self.a}--{self.b}"


@dataclass(frozen=True)
class Route:
    """The path a transfer from ``src`` to ``dst`` takes.

    Attributes:
        src, dst: device names.
        hops: topology points from ``src`` to ``dst`` inclusive (just ``(src,)`` for the same device).
        links: names of the links crossed, in order.
        resources: the simulator's resource id of each link crossed in its direction of travel:
            ``2 * link_index + (0 if travelling a->b else 1)``; a half-duplex link uses ``2 * link_index``
            both ways.
        latency_s: sum of the links' latencies, seconds.
        bandwidth: bottleneck (smallest) bandwidth on the route, bytes/s; ``inf`` for the same device.
    """

    src: str
    dst: str
    hops: tuple[str, ...]
    links: tuple[str, ...]
    resources: tuple[int, ...]
    latency_s: float
    bandwidth: float

    def transfer_s(self, nbytes: float) -> float:
        """Seconds to move ``nbytes`` alone on the route: latency + bytes / bottleneck; 0 on one device."""
        if not self.links:
            return 0.0
        return self.latency_s + nbytes / self.bandwidth


class Cluster:
    """Devices, hosts, switches and links; routes between devices; JSON load and save.

    Build one from records (validated at once, errors name the field), from a preset
    (:meth:`preset`, names in :func:`placement.cluster_presets`), or from JSON (:meth:`load`).
    Public functions that take a cluster accept any of the three (:data:`ClusterLike`) and call
    :meth:`resolve`.
    ``hosts`` defaults to the hosts the devices name, in order of first mention.
    """

    def __init__(
        self,
        name: str,
        devices: Iterable[Device],
        links: Iterable[Link] = (),
        switches: Iterable[Switch] = (),
        hosts: Iterable[Host] | None = None,
        description: str = "",
    ) -> None:
        self.name = name
        self.description = description
        self.devices: list[Device] = list(devices)
        self.links: list[Link] = list(links)
        self.switches: list[Switch] = list(switches)
        if hosts is None:
            seen: dict[str, Host] = {}
            for dev in self.devices:
                if isinstance(dev, Device) and isinstance(dev.host, str):
                    seen.setdefault(dev.host, Host(dev.host))
            hosts = seen.values()
        self.hosts: list[Host] = list(hosts)
        _validate(self, "<cluster>")
        self._device_index = {d.name: i for i, d in enumerate(self.devices)}
        self._topology: nx.Graph | None = None
        self._routes: dict[tuple[str, str], Route] = {}

    # -- reading ------------------------------------------------------------------------------
    def device(self, name: str) -> Device:
        """The device named ``name`` (PlacementError naming the known devices if there is none)."""
        try:
            return self.devices[self._device_index[name]]
        except KeyError:
            raise PlacementError(
                f"cluster {self.name!r} has no device {name!r}; devices: {_few(self.device_names)}"
            ) from None

    def device_index(self, name: str) -> int:
        """Position of the device in :attr:`devices`."""
        self.device(name)
        return self._device_index[name]

    @property
    def device_names(self) -> list[str]:
        return [d.name for d in self.devices]

    def kinds(self) -> list[str]:
        """Distinct device kinds, in order of first appearance."""
        return list(dict.fromkeys(d.kind for d in self.devices))

    def devices_of_host(self, host: str) -> list[Device]:
        return [d for d in self.devices if d.host == host]

    def __len__(self) -> int:
        return len(self.devices)

    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices)

    def __contains__(self, name: object) -> bool:
        return name in self._device_index

    def __repr__(self) -> str:
        kinds = ", ".join(f"{sum(d.kind == k for d in self.devices)}x{k}" for k in self.kinds())
        return f"Cluster({self.name!r}, hosts={len(self.hosts)}, devices=[{kinds}], links={len(self.links)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cluster):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def summary(self) -> str:
        """A few lines for people: hosts, devices by kind, links by kind."""
        lines = [repr(self)]
        if self.description:
            lines.append(f"  {self.description}")
        for host in self.hosts:
            devs = self.devices_of_host(host.name)
            kinds = dict.fromkeys(d.kind for d in devs)
            lines.append(
                f"  host {host.name}: "
                + ", ".join(f"{sum(d.kind == k for d in devs)} x {k}" for k in kinds)
            )
        by_kind: dict[str, list[Link]] = {}
        for link in self.links:
            by_kind.setdefault(link.kind, []).append(link)
        for kind, links in by_kind.items():
            bws = sorted({lk.bandwidth for lk in links})
            bw = "/".join(f"{b / 1e9:g}" for b in bws)
            lines.append(f"  {len(links)} {kind} link(s), {bw} GB/s per direction")
        return "\n".join(lines)

    # -- topology and routes ------------------------------------------------------------------
    @property
    def topology(self) -> nx.Graph:
        """Undirected networkx graph of devices and switches; edge attribute ``link`` is the link index."""
        if self._topology is None:
            g = nx.Graph()
            for d in self.devices:
                g.add_node(d.name, device=True)
            for s in self.switches:
                g.add_node(s.name, device=False)
            for i, link in enumerate(self.links):
                g.add_edge(
                    link.a, link.b, link=i, weight=link.latency_s + ROUTE_REFERENCE_BYTES / link.bandwidth
                )
            self._topology = g
        return self._topology

    @property
    def num_link_resources(self) -> int:
        """Number of resource ids :attr:`Route.resources` draws from (two per link)."""
        return 2 * len(self.links)

    def resource_link(self, resource: int) -> Link:
        """The link a resource id belongs to."""
        return self.links[resource // 2]

    def route(self, src: str, dst: str) -> Route:
        """The route from device ``src`` to device ``dst`` (cached)."""
        key = (src, dst)
        route = self._routes.get(key)
        if route is None:
            self.device(src)
            self.device(dst)
            self._routes_from(src)
            route = self._routes[key]
        return route

    def bottleneck_bandwidth(self, src: str, dst: str) -> float:
        """Smallest link bandwidth on the route, bytes/s (``inf`` from a device to itself)."""
        return self.route(src, dst).bandwidth

    def transfer_s(self, src: str, dst: str, nbytes: float) -> float:
        """Seconds to move ``nbytes`` from ``src`` to ``dst`` with nothing else on the links."""
        return self.route(src, dst).transfer_s(nbytes)

    def _routes_from(self, src: str) -> None:
        g = self.topology

        def no_transit(u: str, v: str, data: dict) -> float | None:
            # u is the point being expanded: only the source device may forward traffic.
            if u != src and g.nodes[u]["device"]:
                return None
            return data["weight"]

        _, paths = nx.single_source_dijkstra(g, src, weight=no_transit)
        missing = [d.name for d in self.devices if d.name not in paths]
        if missing:
            _, transit_paths = nx.single_source_dijkstra(g, src, weight="weight")
            for name in missing:
                if name not in transit_paths:
                    raise PlacementError(f"cluster {self.name!r}: no route from {src!r} to {name!r}")
                paths[name] = transit_paths[name]
        for dev in self.devices:
            self._routes[(src, dev.name)] = self._make_route(paths[dev.name])

    def _make_route(self, hops: list[str]) -> Route:
        g = self.topology
        links: list[str] = []
        resources: list[int] = []
        latency = 0.0
        bandwidth = math.inf
        for x, y in itertools.pairwise(hops):
            i = g.edges[x, y]["link"]
            link = self.links[i]
            links.append(link.name)
            resources.append(2 * i + (0 if (x == link.a or not link.duplex) else 1))
            latency += link.latency_s
            bandwidth = min(bandwidth, link.bandwidth)
        return Route(hops[0], hops[-1], tuple(hops), tuple(links), tuple(resources), latency, bandwidth)

    # -- presets and JSON ---------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **options: Any) -> Cluster:
        """A preset cluster by name (see :func:`placement.cluster_presets`); options go to its builder.

        The builders live in :mod:`placement.presets`, which constructs Clusters and so imports this
        module; it hands its builder over through :func:`provide_presets` when it is imported (the
        ``placement`` package imports it), so this module never imports it back.
        """
        if _preset_builder is None:
            raise PlacementError("no cluster presets: import placement (its package imports placement.presets)")
        return _preset_builder(name, **options)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "name": self.name,
            "description": self.description,
            "hosts": [asdict(h) for h in self.hosts],
            "devices": [asdict(d) for d in self.devices],
            "switches": [asdict(s) for s in self.switches],
            "links": [asdict(lk) for lk in self.links],
        }

    def save(self, path: str | Path) -> None:
        """Write the cluster as JSON."""
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, doc: Any, source: str = "<dict>") -> Cluster:
        """Build a cluster from :meth:`to_dict` output, validating every field; errors name the field."""
        check_header(doc, SCHEMA, SCHEMA_VERSION, source, ClusterFormatError)
        known = {"schema", "version", "name", "description", "hosts", "devices", "switches", "links"}
        for key in doc:
            _check(key in known, source, key, f"unknown field (known: {', '.join(sorted(known))})")
        _check(isinstance(doc.get("name"), str), source, "name", "expected a string")
        _check(isinstance(doc.get("description", ""), str), source, "description", "expected a string")
        records = {}
        for key, record_type, required in (
            ("hosts", Host, ("name",)),
            ("devices", Device, ("name", "kind", "category", "host", "peak_flops", "memory_bandwidth", "memory_bytes")),
            ("switches", Switch, ("name", "kind")),
            ("links", Link, ("a", "b", "kind", "bandwidth")),
        ):
            raw_list = doc.get(key, [] if key in ("switches", "links") else None)
            _check(isinstance(raw_list, list), source, key, "expected a list")
            items = []
            for i, raw in enumerate(raw_list):
                where = f"{key}[{i}]"
                _check(isinstance(raw, dict), source, where, "expected an object")
                names = record_type.__dataclass_fields__
                for req in required:
                    _check(req in raw, source, f"{where}.{req}", "missing")
                for k, v in raw.items():
                    _check(k in names, source, f"{where}.{k}", f"unknown field (known: {', '.join(names)})")
                    _check(_json_type_ok(v, names[k].type), source, f"{where}.{k}", f"expected {names[k].type}, got {v!r}")
                items.append(record_type(**raw))
            records[key] = items
        try:
            return cls(
                doc["name"],
                records["devices"],
                records["links"],
                records["switches"],
                records["hosts"],
                doc.get("description", ""),
            )
        except ClusterFormatError as exc:
            raise ClusterFormatError(str(exc).replace("<cluster>", source, 1)) from None

    @classmethod
    def load(cls, path: str | Path) -> Cluster:
        """Read a cluster written by :meth:`save` (or by hand)."""
        return cls.from_dict(read_json(path, ClusterFormatError, "cluster"), str(path))

    @classmethod
    def resolve(cls, cluster: ClusterLike) -> Cluster:
        """The cluster a public function was given: a ``Cluster`` as it is, a JSON file (a path, or a
        name ending in ``.json``) by :meth:`load`, anything else as a preset name by :meth:`preset`.

        So that ``solve(graph, "dgx1-v100")``, ``simulate(graph, "my.json", ...)`` and
        ``graphc.compile(model, cluster=Cluster(...))`` all work. Raises :class:`ArgumentTypeError` for
        another type, the errors of :meth:`load` and :meth:`preset` for a bad file or an unknown name.
        """
        if isinstance(cluster, Cluster):
            return cluster
        if not isinstance(cluster, (str, os.PathLike)):
            raise ArgumentTypeError(
                f"cluster must be a Cluster, a preset name or a cluster JSON file, got {type(cluster).__name__}"
            )
        text = os.fspath(cluster)
        if text.endswith(".json") or Path(text).is_file():
            return cls.load(text)
        return cls.preset(text)


#: What a public function accepts as a cluster (see :meth:`Cluster.resolve`).
ClusterLike = Cluster | str | os.PathLike


# -- validation -----------------------------------------------------------------------------------
def _check(ok: bool, source: str, where: str, why: str) -> None:
    if not ok:
        raise ClusterFormatError(f"{source}: {where}: {why}")


def _few(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_type_ok(value: Any, annotation: Any) -> bool:
    annotation = str(annotation)
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "str | None":
        return value is None or isinstance(value, str)
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "float":
        return _is_number(value)
    if annotation == "dict[str, float]":
        return isinstance(value, dict) and all(isinstance(k, str) and _is_number(v) for k, v in value.items())
    raise AssertionError(f"no JSON check for annotation {annotation!r}")


def _validate(c: Cluster, source: str) -> None:
    """Check values and references; the first problem raises ClusterFormatError naming its field."""
    _check(isinstance(c.name, str) and c.name != "", source, "name", "expected a non-empty string")
    _check(len(c.devices) > 0, source, "devices", "a cluster needs at least one device")
    host_names: set[str] = set()
    for i, h in enumerate(c.hosts):
        where = f"hosts[{i}]"
        _check(isinstance(h, Host), source, where, f"expected a Host, got {h!r}")
        _check(isinstance(h.name, str) and h.name != "", source, f"{where}.name", "expected a non-empty string")
        _check(h.name not in host_names, source, f"{where}.name", f"duplicate host {h.name!r}")
        host_names.add(h.name)
    points: set[str] = set()
    for i, d in enumerate(c.devices):
        where = f"devices[{i}]"
        _check(isinstance(d, Device), source, where, f"expected a Device, got {d!r}")
        _check(isinstance(d.name, str) and d.name != "", source, f"{where}.name", "expected a non-empty string")
        _check(d.name not in points, source, f"{where}.name", f"duplicate name {d.name!r}")
        points.add(d.name)
        _check(isinstance(d.kind, str) and d.kind != "", source, f"{where}.kind", "expected a non-empty string")
        _check(
            d.category in CATEGORIES,
            source,
            f"{where}.category",
            f"expected one of {', '.join(CATEGORIES)}, got {d.category!r}",
        )
        _check(d.host in host_names, source, f"{where}.host", f"no host named {d.host!r}")
        _check(
            isinstance(d.peak_flops, dict) and len(d.peak_flops) > 0,
            source,
            f"{where}.peak_flops",
            "expected a non-empty mapping of dtype name to FLOP/s",
        )
        for dtype, flops in d.peak_flops.items():
            _check(
                _is_number(flops) and flops > 0,
                source,
                f"{where}.peak_flops.{dtype}",
                f"expected a positive number, got {flops!r}",
            )
        for attr in ("memory_bandwidth", "memory_bytes"):
            value = getattr(d, attr)
            _check(_is_number(value) and value > 0, source, f"{where}.{attr}", f"expected a positive number, got {value!r}")
        _check(
            _is_number(d.op_overhead_s) and d.op_overhead_s >= 0,
            source,
            f"{where}.op_overhead_s",
            f"expected a number >= 0, got {d.op_overhead_s!r}",
        )
    for i, s in enumerate(c.switches):
        where = f"switches[{i}]"
        _check(isinstance(s, Switch), source, where, f"expected a Switch, got {s!r}")
        _check(isinstance(s.name, str) and s.name != "", source, f"{where}.name", "expected a non-empty string")
        _check(s.name not in points, source, f"{where}.name", f"duplicate name {s.name!r} (devices and switches share names)")
        points.add(s.name)
        _check(isinstance(s.kind, str) and s.kind != "", source, f"{where}.kind", "expected a non-empty string")
        _check(s.host is None or s.host in host_names, source, f"{where}.host", f"no host named {s.host!r}")
    pairs: dict[frozenset, int] = {}
    link_names: set[str] = set()
    for i, lk in enumerate(c.links):
        where = f"links[{i}]"
        _check(isinstance(lk, Link), source, where, f"expected a Link, got {lk!r}")
        for end in ("a", "b"):
            value = getattr(lk, end)
            _check(value in points, source, f"{where}.{end}", f"no device or switch named {value!r}")
        _check(lk.a != lk.b, source, f"{where}.b", f"a link joins two different points, both are {lk.a!r}")
        pair = frozenset((lk.a, lk.b))
        _check(
            pair not in pairs,
            source,
            where,
            f"a second link between {lk.a!r} and {lk.b!r} (links[{pairs.get(pair)}]); "
            "describe parallel lanes as one link with their summed bandwidth",
        )
        pairs[pair] = i
        _check(lk.name not in link_names, source, f"{where}.name", f"duplicate link name {lk.name!r}")
        link_names.add(lk.name)
        _check(isinstance(lk.kind, str) and lk.kind != "", source, f"{where}.kind", "expected a non-empty string")
        _check(_is_number(lk.bandwidth) and lk.bandwidth > 0, source, f"{where}.bandwidth", f"expected a positive number, got {lk.bandwidth!r}")
        _check(_is_number(lk.latency_s) and lk.latency_s >= 0, source, f"{where}.latency_s", f"expected a number >= 0, got {lk.latency_s!r}")
        _check(isinstance(lk.duplex, bool), source, f"{where}.duplex", f"expected true or false, got {lk.duplex!r}")
    if len(c.devices) > 1:
        g = nx.Graph()
        g.add_nodes_from(points)
        g.add_edges_from((lk.a, lk.b) for lk in c.links)
        reach = nx.node_connected_component(g, c.devices[0].name)
        for i, d in enumerate(c.devices):
            _check(
                d.name in reach,
                source,
                "links",
                f"device {d.name!r} (devices[{i}]) is not connected to {c.devices[0].name!r}",
            )
