"""runtime.corun: the co-run slowdown from measured step times, what measure_corun refuses before any rank
starts, and (distributed) ranks that time a step alone and together."""

from __future__ import annotations

import time

import pytest

from graphc.ir.errors import ConfigurationError, RuntimeFault
from runtime import corun
from runtime.corun import CorunMeasurement, measure_corun

SLEEP_S = 0.03


def sleeping_step_factory(seconds: float):
    """A step that waits and computes nothing: ranks running it at once cannot slow each other."""

    def step() -> None:
        time.sleep(seconds)

    return step


def failing_factory():
    raise ValueError("no such model here")


def test_the_slowdown_is_the_ranks_mean_ratio_to_alone_and_never_below_1():
    measured = CorunMeasurement(alone_ms=[10.0, 20.0], together_ms={2: [15.0, 20.0], 3: [9.0, 19.0]})
    # k = 2: (15 / 10 + 20 / 20) / 2; k = 3 faster than alone (noise): 1
    assert measured.slowdown == {2: 1.25, 3: 1.0}


@pytest.mark.parametrize(
    ("counts", "options", "wrong"),
    [([1], {}, "counts must be integers from 2"), ([], {}, "counts must be"), ([2.0], {}, "counts must be"),
     ([2], {"steps": 0}, "steps must be >= 1"), ([2], {"tail": -1}, "tail >= 0")],
)  # fmt: skip
def test_bad_counts_and_steps_are_refused_before_any_rank_starts(counts, options, wrong, monkeypatch):
    monkeypatch.setattr(corun, "usable_cores", lambda: 4)
    monkeypatch.setattr(corun, "spawn", lambda *a, **k: pytest.fail("no rank may start"))
    with pytest.raises(ConfigurationError, match=wrong):
        measure_corun(f"file:{__file__}:sleeping_step_factory", [0.0], counts, **options)


def test_more_processes_than_cores_and_an_unknown_factory_are_refused(monkeypatch):
    monkeypatch.setattr(corun, "usable_cores", lambda: 2)
    monkeypatch.setattr(corun, "spawn", lambda *a, **k: pytest.fail("no rank may start"))
    with pytest.raises(ConfigurationError, match="2 usable cores .*time slicing"):
        measure_corun(f"file:{__file__}:sleeping_step_factory", [0.0], [3])
    with pytest.raises(ConfigurationError, match="cannot import"):
        measure_corun("graphc.app.calibrate:no_such_factory", [], [2])


@pytest.mark.distributed
@pytest.mark.slow
def test_ranks_that_only_wait_do_not_slow_each_other():
    if corun.usable_cores() < 2:
        pytest.skip("needs 2 usable cores")
    measured = measure_corun(f"file:{__file__}:sleeping_step_factory", [SLEEP_S], [2], steps=3)
    assert len(measured.alone_ms) == 2 and list(measured.together_ms) == [2] and len(measured.together_ms[2]) == 2
    for t in [*measured.alone_ms, *measured.together_ms[2]]:
        assert 1e3 * SLEEP_S <= t < 1e3 * SLEEP_S + 25  # a sleep and its wake-up
    assert measured.slowdown[2] < 1.5


@pytest.mark.distributed
@pytest.mark.slow
def test_a_factory_that_fails_on_a_rank_is_reported_naming_the_rank():
    if corun.usable_cores() < 2:
        pytest.skip("needs 2 usable cores")
    with pytest.raises(RuntimeFault, match="rank 0 failed: .*no such model here"):
        measure_corun(f"file:{__file__}:failing_factory", [], [2])
