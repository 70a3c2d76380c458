"""runtime.link.measure_link: the link between two gloo ranks as the runtime meets it, on two ranks of
this machine or on two ranks another launcher starts (one on each of two namespace hosts in
benchmarks/multihost.py)."""

from __future__ import annotations

import pytest

from runtime.launch import spawn
from runtime.link import LinkSpeed, measure_link


@pytest.mark.distributed
def test_the_link_is_measured_on_the_ranks_the_caller_starts():
    started = []

    def two_ranks(fn, args):
        started.append(args)
        return spawn(fn, 2, args, timeout_s=120)

    link = measure_link(steps=3, two_ranks=two_ranks)
    assert isinstance(link, LinkSpeed)
    assert link.latency_s > 0 and 1e7 < link.bandwidth < 1e12  # 10 MB/s .. 1 TB/s: loopback, however busy
    assert link.endpoint_cpu_s >= 0 and link.endpoint_cpu_per_byte_s >= 0
    # a tiny message's chain first, then the 1 MiB one (again only when the machine made it meaningless)
    assert [a[1] for a in started[:2]] == [8, (1 << 20) // 4] and all(a[0] == 2 for a in started)
