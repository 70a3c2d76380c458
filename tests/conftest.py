"""Suite-wide test settings."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``gpu`` where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """Run on one intra-op thread: the tests' tiny ops gain nothing from two, and on a shared 2-core
    machine the thread pool's spin-waiting under load makes them up to a hundred times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def calibration_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrations (:mod:`graphc.app.calibrate`) are cached in a fresh folder per test, never in the
    user's ``~/.cache/graphc``, so that no test reads another's measurements."""
    monkeypatch.setenv("GRAPHC_CACHE", str(tmp_path_factory.mktemp("graphc-cache")))
