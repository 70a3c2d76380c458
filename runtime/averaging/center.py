"""Asynchronous EASGD's center variable, sharded over parameter-server ranks: the layout, the messages,
and the server's loop (:class:`CenterServer`). The workers' side is :mod:`runtime.averaging.async_easgd`.

Layout (:class:`AsyncLayout`): some ranks are workers, the others servers (CPU ranks, as the talk's 64
CPU servers). The flat parameter vector of ``P`` elements is cut into ``S`` contiguous shards, one per
server, of ``floor(P (s + 1) / S) - floor(P s / S)`` elements.

Messages (point to point over ``torch.distributed``, the default group). A worker sends a header (one
int64, tag :data:`HEADER_TAG`); the server serves each worker on a thread of its own, which receives
that worker's headers in the order they were sent and acts on them under one lock:

* ``FETCH``: the server sends its center shard ``x~`` back (tag :data:`CENTER_TAG`); the worker posted
  the receive before sending the header, so the server's send never waits;
* ``PUSH``: the worker's shard ``x_i`` follows (tag :data:`PUSH_TAG`); the server applies the elastic
  step on arrival, with its center as it is then:   x~ <- x~ + alpha (x_i - x~);
* ``PEEK``: the center shard for evaluation (tag :data:`PEEK_TAG`), not counted as training traffic;
* ``DONE``: the worker has finished; the server returns once every worker has finished or is gone.

At start the first worker sends each server its initial shard (tag :data:`INIT_TAG`), so the center
starts equal to the workers.

Faults. A receive from a given rank fails at once when that rank's process dies (gloo sees its
connection close), and after the process group's timeout when it hangs; a receive from any source
(``dist.recv(src=None)``) would notice neither, which is why each worker has its own thread. A worker
that dies is named in :attr:`CenterServer.lost` (and logged) and the others are served on: the center
keeps improving. A server that dies is an error on every worker that next waits for it
(:class:`~graphc.ir.errors.RankFailure` naming the server's rank, :mod:`runtime.averaging.async_easgd`).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from graphc.ir.errors import ConfigurationError, MismatchError
from runtime.averaging.easgd import DEFAULT_BETA
from runtime.averaging.strategy import Traffic

HEADER_TAG, PUSH_TAG, CENTER_TAG, PEEK_TAG, INIT_TAG = 11, 12, 13, 14, 15
FETCH, PUSH, PEEK, DONE = 0, 1, 2, 3
HEADER_BYTES = 8  # one int64

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AsyncLayout:
    """Which ranks are workers and which hold the center's shards (module docstring).

    Attributes:
        workers: the worker ranks; the first one's parameters start the run.
        servers: the server ranks, in shard order.
        fractions: each server's share of the flat vector, in server order (any positive weights; they
            are normalised); empty: equal shares. Asynchronous parameter servers size them to their links
            (:func:`placement.sharding.shard_fractions`).
    """

    workers: tuple[int, ...]
    servers: tuple[int, ...]
    fractions: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.workers or not self.servers:
            raise ConfigurationError(f"async EASGD layout: workers {list(self.workers)} and servers {list(self.servers)}: need at least one of each")
        if set(self.workers) & set(self.servers) or len({*self.workers, *self.servers}) != len(self.workers) + len(self.servers):
            raise ConfigurationError(
                f"async EASGD layout: workers {list(self.workers)} and servers {list(self.servers)} must be distinct ranks"
            )
        if self.fractions and (
            len(self.fractions) != len(self.servers)
            or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) and f > 0 for f in self.fractions)
        ):
            raise ConfigurationError(
                f"async EASGD layout: fractions {list(self.fractions)} for servers {list(self.servers)}: "
                "expected one positive share per server, or none for equal shares"
            )

    @classmethod
    def servers_last(cls, world_size: int, servers: int) -> AsyncLayout:
        """Ranks ``0 .. W - S - 1`` work, the last ``servers`` ranks serve."""
        if not 0 < servers < world_size:
            raise ConfigurationError(f"servers={servers!r} of {world_size} ranks: expected 1 .. {world_size - 1} (at least one worker)")
        return cls(tuple(range(world_size - servers)), tuple(range(world_size - servers, world_size)))

    def shard(self, numel: int, server: int) -> slice:
        """The elements of a flat vector of ``numel`` that server rank ``server`` holds: contiguous, in
        server order, about ``numel`` times its share (:meth:`cuts`)."""
        s = self.servers.index(server)
        cuts = self.cuts(numel)
        return slice(cuts[s], cuts[s + 1])

    def cuts(self, numel: int) -> list[int]:
        """Where the shards of a flat vector of ``numel`` begin, in server order, then ``numel``: equal
        shares, or ``numel`` times each cumulative share rounded, every server keeping at least one
        element when there are enough (the shards tile the vector whatever the shares)."""
        count = len(self.servers)
        if not self.fractions:
            return [numel * s // count for s in range(count + 1)]
        cumulative = list(itertools.accumulate(self.fractions, initial=0.0))
        cuts = [round(numel * c / cumulative[-1]) for c in cumulative[:-1]] + [numel]
        if numel >= count:
            for s in range(1, count):
                cuts[s] = min(max(cuts[s], cuts[s - 1] + 1), numel - (count - s))
        return cuts

    def shards(self, numel: int) -> list[slice]:
        """Every server's shard, in server order."""
        cuts = self.cuts(numel)
        return [slice(a, b) for a, b in itertools.pairwise(cuts)]


def send_header(kind: int, server: int) -> Any:
    """Post a header of ``kind`` to ``server`` (an ``isend``; wait on what it returns)."""
    return dist.isend(torch.tensor([kind], dtype=torch.int64), server, tag=HEADER_TAG)


class CenterServer:
    """One shard of the center on a server rank (module docstring): ``serve()`` until every worker is done.

    Args:
        layout: the ranks' roles; this rank must be one of ``layout.servers``.
        numel: the elements of the workers' flat parameter vector.
        alpha: the moving rate (default ``0.9 / N``, N the number of workers, as the workers').
        dtype: the parameters' dtype.

    Attributes:
        center: this server's shard of the center ``x~``.
        arrivals: worker rank -> the pushes applied from it.
        lost: worker rank -> what the server was doing when it found the worker gone, and gloo's error.
        traffic: what the server sent and received.
    """

    def __init__(self, layout: AsyncLayout, numel: int, *, alpha: float | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.layout = layout
        self.rank = dist.get_rank()
        if self.rank not in layout.servers:
            raise ConfigurationError(f"CenterServer on rank {self.rank}, which is not a server of {layout}")
        self.alpha = DEFAULT_BETA / len(layout.workers) if alpha is None else float(alpha)
        self.shard = layout.shard(numel, self.rank)
        self.numel = numel
        self.center = torch.empty(self.shard.stop - self.shard.start, dtype=dtype)
        dist.recv(self.center, layout.workers[0], tag=INIT_TAG)
        self.arrivals = {worker: 0 for worker in layout.workers}
        self.traffic = Traffic()
        self.lost: dict[int, str] = {}
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def serve(self) -> torch.Tensor:
        """Answer the workers, one thread per worker, until each has sent DONE or is gone; the final
        center shard. A worker that dies or stays silent past the process group's timeout is named in
        :attr:`lost` (and logged) while the others are served on."""
        threads = [threading.Thread(target=self._serve_worker, args=(w,), name=f"center-shard-for-rank-{w}") for w in self.layout.workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self._error is not None:
            raise self._error
        return self.center

    def _serve_worker(self, worker: int) -> None:
        """The messages of one worker, in the order it sent them (module docstring)."""
        header = torch.empty(1, dtype=torch.int64)
        pushed = torch.empty_like(self.center)
        doing = "waiting for its next message"
        try:
            while True:
                dist.recv(header, worker, tag=HEADER_TAG)
                kind = int(header.item())
                if kind == DONE:
                    return
                if kind in (FETCH, PEEK):
                    doing = "sending it the center"
                    with self._lock:
                        snapshot = self.center.clone()
                    dist.send(snapshot, worker, tag=CENTER_TAG if kind == FETCH else PEEK_TAG)
                    sent = snapshot.numel() * snapshot.element_size() if kind == FETCH else 0
                    self._count(received=HEADER_BYTES, sent=sent)
                elif kind == PUSH:
                    doing = "receiving its parameters"
                    dist.recv(pushed, worker, tag=PUSH_TAG)
                    with self._lock:
                        self.center += self.alpha * (pushed - self.center)
                        self.arrivals[worker] += 1
                    self._count(received=HEADER_BYTES + pushed.numel() * pushed.element_size(), exchanges=1)
                else:
                    raise MismatchError(f"server rank {self.rank}: header {kind} from rank {worker} is no message of async EASGD")
                doing = "waiting for its next message"
        except RuntimeError as exc:  # gloo: the worker's connection closed, or the wait timed out
            with self._lock:
                self.lost[worker] = f"{doing}: {str(exc).splitlines()[0]}"
            _log.warning("server rank %d: worker rank %d is gone (%s); serving the other workers", self.rank, worker, self.lost[worker])
        except BaseException as exc:  # noqa: BLE001 -- raised again by serve(), on the main thread
            self._error = exc

    def _count(self, *, sent: float = 0.0, received: float = 0.0, exchanges: int = 0) -> None:
        with self._lock:
            self.traffic.sent += sent
            self.traffic.received += received
            self.traffic.exchanges += exchanges

    def state_dict(self) -> dict[str, Any]:
        """The shard, its place and the counts (tensors and plain values)."""
        return {
            "kind": type(self).__name__,
            "center": self.center,
            "shard": [self.shard.start, self.shard.stop, self.numel],
            "alpha": self.alpha,
            "arrivals": {str(w): n for w, n in self.arrivals.items()},
            "traffic": asdict(self.traffic),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; refuses a shard of another place or size."""
        if state.get("kind") != type(self).__name__ or list(state["shard"]) != [self.shard.start, self.shard.stop, self.numel]:
            raise MismatchError(
                f"server rank {self.rank}: the checkpoint holds shard {state.get('shard')} of a {state.get('kind')!r}, "
                f"this server holds [{self.shard.start}, {self.shard.stop}) of {self.numel}; resume with the same layout and model"
            )
        self.center = state["center"].clone()
        self.alpha = float(state["alpha"])
        self.arrivals = {int(w): int(n) for w, n in state["arrivals"].items()}
        self.traffic = Traffic(**state["traffic"])

