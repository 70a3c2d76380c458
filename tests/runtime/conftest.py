"""Fixtures of the runtime tests: namespace hosts (:class:`runtime.hosts.Hosts`), skipped with the reason
where they cannot be made (not root, no iproute2, not Linux)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from runtime.hosts import Hosts, remove_stale, why_unavailable


@pytest.fixture
def make_hosts() -> Iterator[Callable[..., Hosts]]:
    """``make_hosts(n, **options)``: a :class:`Hosts` made now and removed after the test, however it ends.

    Namespaces left by a run that was killed outright (SIGKILL) are removed first."""
    reason = why_unavailable()
    if reason:
        pytest.skip(f"namespace hosts cannot be made here: {reason}")
    remove_stale()
    made: list[Hosts] = []

    def make(n: int, **options: object) -> Hosts:
        hosts = Hosts(n, **options)  # type: ignore[arg-type]
        made.append(hosts)
        return hosts.__enter__()

    yield make
    for hosts in made:
        hosts.close()
