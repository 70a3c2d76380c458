"""Asynchronous EASGD, the workers' side: every ``tau`` local steps a worker exchanges with the center's
shards on the parameter-server ranks (:mod:`runtime.averaging.center`), without waiting for the other
workers (the paper's Algorithm 1, with the center sharded as in the talk's set-up).

At an exchange, with ``x~_old`` the center shards the worker fetched and ``x_i`` its parameters now:

    worker:                  x_i <- x_i - alpha (x_i - x~_old)
    server, on the arrival:  x~  <- x~  + alpha (x_i - x~)          (x~ as the server holds it then)

Prefetch ``p`` (0 <= p < tau): the worker posts the fetch of the center ``p`` local steps before the
exchange (after local step ``k tau - p``), so it travels while the worker computes; at the exchange the
worker waits for it (already there unless the servers are slow), pushes its parameters and applies its
step. ``x~_old`` is then ``p`` local steps older than the center at the push: the talk's ``tau = 10``,
``prefetch = 5`` fetch half a period ahead. ``p = 0`` fetches at the exchange itself.

Defaults: ``tau = 10``, ``alpha = 0.9 / N`` (the paper's ``beta = N alpha = 0.9``), ``p = 0``.
Per exchange a worker sends its parameters (``P`` bytes, cut into the servers' shards) and receives the
center (``P`` bytes), plus two 8-byte headers (FETCH, PUSH) per server: less than a ring all-reduce's
``2 (N - 1) / N P`` each way once ``N > 2``, and no worker waits for another.

Messages are CPU tensors over the default process group, which must therefore be gloo (the servers
are CPU ranks); a worker whose model lives on a GPU exchanges a CPU copy of its parameters.

A server that dies (or hangs past the process group's timeout) while a worker waits for it raises
:class:`~graphc.ir.errors.RankFailure` naming the server's rank; a worker that dies stops nobody (the
servers serve the others, :mod:`runtime.averaging.center`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from graphc.ir.errors import ConfigurationError, RankFailure
from runtime.averaging.center import CENTER_TAG, DONE, FETCH, HEADER_BYTES, INIT_TAG, PEEK, PEEK_TAG, PUSH, PUSH_TAG, AsyncLayout, send_header
from runtime.averaging.easgd import DEFAULT_BETA, DEFAULT_TAU
from runtime.averaging.strategy import Strategy, check_period


class AsyncEASGD(Strategy):
    """A worker of asynchronous EASGD (module docstring).

    Args:
        model, optimizer: the worker's model and its local optimizer (Nesterov SGD makes it async EAMSGD).
        layout: the ranks' roles; this rank must be one of ``layout.workers``.
        tau: local steps between exchanges (default 10).
        alpha: the moving rate (default ``0.9 / N``).
        prefetch: how many local steps before the exchange the center is fetched (0 <= p < tau; default 0).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        layout: AsyncLayout,
        *,
        tau: int = DEFAULT_TAU,
        alpha: float | None = None,
        prefetch: int = 0,
    ) -> None:
        super().__init__(model, optimizer, check_period("tau", tau), group=None)
        self.layout = layout
        self.rank = dist.get_rank()
        if self.rank not in layout.workers:
            raise ConfigurationError(f"AsyncEASGD on rank {self.rank}, which is not a worker of {layout}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 0 <= prefetch < self.period:
            raise ConfigurationError(f"prefetch={prefetch!r}: expected an integer 0 <= prefetch < tau = {self.period}")
        self.alpha = DEFAULT_BETA / len(layout.workers) if alpha is None else float(alpha)
        if not 0 < self.alpha <= 1:
            raise ConfigurationError(f"alpha={self.alpha!r}: expected 0 < alpha <= 1 (the paper's 0.9 / N by default)")
        self.prefetch = prefetch
        self.shards = layout.shards(sum(p.numel() for p in self.parameters))
        self._fetch: list[tuple[int, Any, torch.Tensor]] | None = None
        self._start()

    @property
    def workers(self) -> int:
        return len(self.layout.workers)

    def _start(self) -> None:
        """The first worker sends its parameters to the other workers and each server its shard."""
        first = self.layout.workers[0]
        flat = self.flat().cpu()
        if self.rank != first:
            dist.recv(flat, first, tag=INIT_TAG)
            self.set_flat(flat)
            return
        works = [dist.isend(flat, worker, tag=INIT_TAG) for worker in self.layout.workers[1:]]
        works += [dist.isend(flat[shard].clone(), server, tag=INIT_TAG) for server, shard in zip(self.layout.servers, self.shards)]
        for work in works:
            work.wait()

    def _request(self, kind: int, tag: int) -> list[tuple[int, Any, torch.Tensor]]:
        """Post the receives of every server's center shard, then the headers asking for them."""
        dtype = self.parameters[0].dtype
        posted = []
        for server, shard in zip(self.layout.servers, self.shards):
            buffer = torch.empty(shard.stop - shard.start, dtype=dtype)
            work = self._guard(server, "asking for the center", dist.irecv, buffer, server, tag=tag)
            posted.append((server, work, buffer))
        for server in self.layout.servers:
            self._guard(server, "asking for the center", _send_and_wait, kind, server)
        return posted

    def _guard(self, server: int, op: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)``; gloo's error when the server died or hung becomes a RankFailure naming it."""
        try:
            return call(*args, **kwargs)
        except RuntimeError as exc:
            raise RankFailure(
                f"async EASGD worker rank {self.rank}: server rank {server} failed while {op} "
                f"(step {self.steps}): {str(exc).splitlines()[0]}",
                rank=server,
                device=f"server rank {server}",
                op=op,
            ) from exc

    def after_local_step(self) -> None:
        if self.prefetch and (self.steps + self.prefetch) % self.period == 0:
            self._fetch = self._request(FETCH, CENTER_TAG)
            self.traffic.sent += HEADER_BYTES * len(self.layout.servers)

    def exchange(self) -> None:
        if self._fetch is None:
            self._fetch = self._request(FETCH, CENTER_TAG)
            self.traffic.sent += HEADER_BYTES * len(self.layout.servers)
        old_center = self._wait(self._fetch)
        self._fetch = None
        self.traffic.received += old_center.numel() * old_center.element_size()
        worker = self.flat().cpu()
        works = []
        for server, shard in zip(self.layout.servers, self.shards):
            op = "pushing the parameters"
            works.append((server, self._guard(server, op, send_header, PUSH, server)))
            works.append((server, self._guard(server, op, dist.isend, worker[shard].contiguous(), server, tag=PUSH_TAG)))
        for server, work in works:
            self._guard(server, "pushing the parameters", work.wait)
        self.traffic.sent += HEADER_BYTES * len(self.layout.servers) + worker.numel() * worker.element_size()
        self.set_flat(worker - self.alpha * (worker - old_center))

    def _wait(self, posted: list[tuple[int, Any, torch.Tensor]]) -> torch.Tensor:
        for server, work, _ in posted:
            self._guard(server, "receiving the center", work.wait)
        return torch.cat([buffer for _, _, buffer in posted])

    def peek_center(self) -> torch.Tensor:
        """The whole center as the servers hold it now (for evaluation; not counted as traffic)."""
        return self._wait(self._request(PEEK, PEEK_TAG))

    def finish(self) -> None:
        """Drop a fetch still in flight and tell every server this worker is done."""
        if self._fetch is not None:
            self._wait(self._fetch)
            self._fetch = None
        for server in self.layout.servers:
            self._guard(server, "saying it is done", _send_and_wait, DONE, server)

    def state_dict(self) -> dict[str, Any]:
        if self._fetch is not None:
            raise ConfigurationError(
                f"AsyncEASGD on rank {self.rank}: a prefetch of the center is in flight at step {self.steps}; "
                "checkpoint after finish() or at a step where none is (between an exchange and the next prefetch)"
            )
        return super().state_dict()

    def extra_state(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "prefetch": self.prefetch}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.alpha, self.prefetch = float(state["alpha"]), int(state["prefetch"])


def _send_and_wait(kind: int, server: int) -> None:
    """Send a header of ``kind`` to ``server`` and wait until it is sent."""
    send_header(kind, server).wait()
