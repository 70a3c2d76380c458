"""Calibrations in these tests see a quiet machine (:class:`QuietLoad`), so that whether they are cached
does not depend on what else runs while the tests do; test_calibrate.py sets other load on purpose."""

from __future__ import annotations

import pytest

import graphc.app.calibrate


class QuietLoad:
    """Stands in for :class:`graphc.app.measure_plans.OtherLoad`: the other processes used
    :attr:`other_cores` (class-wide, so a test can set it) during every measurement."""

    other_cores: float = 0.0

    def start(self) -> None:
        pass

    def stop(self) -> float:
        return self.other_cores


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch: pytest.MonkeyPatch) -> type[QuietLoad]:
    monkeypatch.setattr(QuietLoad, "other_cores", 0.0)
    monkeypatch.setattr(graphc.app.calibrate, "OtherLoad", QuietLoad)
    return QuietLoad
