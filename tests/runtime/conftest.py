"""Fixtures of the runtime tests: namespace hosts (:class:`runtime.hosts.Hosts`), skipped with the reason
where they cannot be made (not root, no iproute2, not Linux)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from runtime.hosts import Hosts, remove_stale, why_unavailable
from runtime.hosts.fixture import PREFIX
from runtime.hosts.net import namespaces


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


@pytest.fixture(autouse=True, scope="session")
def no_namespace_left_behind() -> Iterator[None]:
    """After the session, no network namespace this test process made is left (``ip netns list``)."""
    yield
    if why_unavailable():
        return
    mine = f"{PREFIX}-{os.getpid()}-"
    left = [name for name in namespaces() if name.startswith(mine)]
    assert not left, f"the tests left network namespaces behind: {left}"
