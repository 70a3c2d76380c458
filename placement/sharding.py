"""Which parameter server holds which bucket: shards balanced by bytes across the servers and their links.

Under :class:`placement.sync.ParameterServerSync` every bucket of gradients (:class:`placement.sync.Bucket`)
goes to one server, which sums it, applies the optimizer and sends the weights back. A server's time per
step is about the bytes it holds over the bandwidth it receives them at, so the shards are balanced by
that time, not by bytes alone. With ``B_s`` the bandwidth of the slowest route from any worker to server
``s`` (:meth:`placement.cluster.Cluster.route`) and ``W_s`` the bytes of the buckets it holds, its load is

    load_s = W_s / B_s

and :func:`assign_shards` minimises the largest load greedily (longest processing time first, Graham
1969): the buckets, largest first (ties: lower index first), each go to the server whose load would be
lowest with it (ties: the earlier server in ``servers``). On equal links this balances bytes; a server
behind a link half as fast ends with about half the bytes. Asynchronous servers hold contiguous slices of
one flat vector instead of buckets, sized by :func:`shard_fractions` to the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from placement.errors import ConfigurationError

if TYPE_CHECKING:
    from placement.cluster import Cluster
    from placement.sync import Bucket


def server_bandwidths(servers: Sequence[str], cluster: Cluster, workers: Sequence[str]) -> dict[str, float]:
    """Server -> ``B_s``, the bandwidth of the slowest route from any of ``workers`` to it (module
    docstring). Raises :class:`ConfigurationError` when ``servers`` or ``workers`` is empty, or names a
    device the cluster lacks."""
    if not servers:
        raise ConfigurationError("parameter servers: none given: name one or more cluster devices")
    if not workers:
        raise ConfigurationError("parameter servers: no worker given: name the devices that push gradients")
    unknown = [d for d in (*servers, *workers) if d not in cluster]
    if unknown:
        raise ConfigurationError(
            f"parameter servers: {unknown[0]!r} is not a device of cluster {cluster.name!r}; "
            f"devices: {', '.join(cluster.device_names)}"
        )
    return {s: min(cluster.route(w, s).bandwidth for w in workers) for s in servers}


def assign_shards(
    buckets: list[Bucket], servers: Sequence[str], cluster: Cluster, workers: Sequence[str]
) -> dict[int, str]:
    """Bucket index -> the server that holds it, by the rule of the module docstring (deterministic).

    Raises :class:`ConfigurationError` as :func:`server_bandwidths` does."""
    bandwidth = server_bandwidths(servers, cluster, workers)
    held = dict.fromkeys(servers, 0.0)
    owner: dict[int, str] = {}
    for bucket in sorted(buckets, key=lambda b: (-b.nbytes, b.index)):
        server = min(servers, key=lambda s: (held[s] + bucket.nbytes) / bandwidth[s])
        held[server] += bucket.nbytes
        owner[bucket.index] = server
    return owner


def shard_fractions(servers: Sequence[str], cluster: Cluster, workers: Sequence[str]) -> list[float]:
    """Each server's share of one flat parameter vector cut into contiguous shards (the asynchronous
    servers, :mod:`runtime.servers`), in ``servers`` order: ``B_s / sum(B)``, which makes every load
    ``W_s / B_s`` equal, the rule of the module docstring where the bytes divide freely. On equal links
    the shares are equal. Raises :class:`ConfigurationError` as :func:`server_bandwidths` does."""
    bandwidth = server_bandwidths(servers, cluster, workers)
    total = sum(bandwidth.values())
    return [bandwidth[s] / total for s in servers]
