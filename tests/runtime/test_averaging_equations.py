"""The averaging strategies' equations on small tensors, computed by hand (no processes)."""

from __future__ import annotations

import pytest
import torch

from graphc.ir.errors import ConfigurationError
from runtime.averaging import AsyncLayout, elastic_exchange, elastic_rates, ring_allreduce_bytes


def test_one_elastic_exchange_is_the_papers_equations_by_hand():
    worker, center, mean = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0]), torch.tensor([3.0, 0.0])
    new_worker, new_center = elastic_exchange(worker, center, mean, alpha=0.25, beta=0.5)
    # x_i - alpha (x_i - x~) = 1 - 0.25 * 1, -2 - 0.25 * (-3);  x~ + beta (m - x~) = 0 + 0.5 * 3, 1 + 0.5 * (-1)
    assert new_worker.tolist() == [0.75, -1.25]
    assert new_center.tolist() == [1.5, 0.5]


def _exchange_all(workers: list[torch.Tensor], center: torch.Tensor, alpha: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    mean = torch.stack(workers).mean(0)
    moved = [elastic_exchange(w, center, mean, alpha, len(workers) * alpha) for w in workers]
    return [w for w, _ in moved], moved[0][1]


WORKERS = [torch.tensor([1.0, 5.0]), torch.tensor([3.0, -1.0]), torch.tensor([-4.0, 2.0]), torch.tensor([0.0, 2.0])]
CENTER = torch.tensor([2.0, 2.0])


def test_an_exchange_conserves_the_sum_of_the_workers_and_the_center():
    new_workers, new_center = _exchange_all(WORKERS, CENTER, alpha=0.1)
    assert torch.allclose(torch.stack(new_workers).sum(0) + new_center, torch.stack(WORKERS).sum(0) + CENTER)


def test_beta_one_makes_the_center_the_workers_mean():
    _, new_center = _exchange_all(WORKERS, CENTER, alpha=1 / len(WORKERS))
    assert torch.allclose(new_center, torch.tensor([0.0, 2.0]))  # ((1+3-4+0)/4, (5-1+2+2)/4)


def test_alpha_one_over_n_plus_one_averages_the_workers_and_the_center():
    new_workers, new_center = _exchange_all(WORKERS, CENTER, alpha=1 / (len(WORKERS) + 1))
    everything = torch.stack([*WORKERS, CENTER]).mean(0)  # (2/5, 10/5)
    assert torch.allclose(new_center, everything)
    assert torch.allclose(torch.stack(new_workers).mean(0), everything)


def test_the_rates_default_to_the_papers_beta_and_keep_beta_n_alpha():
    assert elastic_rates(4, None, None) == pytest.approx((0.225, 0.9))
    assert elastic_rates(4, 0.1, None) == pytest.approx((0.1, 0.4))
    assert elastic_rates(4, None, 0.4) == pytest.approx((0.1, 0.4))


@pytest.mark.parametrize(
    "alpha, beta, says",
    [(0.1, 0.9, "beta = N alpha"), (0.5, None, "stable"), (None, 2.5, "stable"), (-0.1, None, "stable")],
)
def test_inconsistent_or_unstable_rates_are_refused_saying_why(alpha, beta, says):
    with pytest.raises(ConfigurationError, match=says):
        elastic_rates(4, alpha, beta)


def test_ring_allreduce_bytes_are_two_n_minus_one_over_n():
    assert ring_allreduce_bytes(1000, 4) == 1500
    assert ring_allreduce_bytes(1000, 1) == 0


def test_the_center_is_sharded_contiguously_over_the_servers():
    layout = AsyncLayout.servers_last(5, 2)
    assert layout.workers == (0, 1, 2) and layout.servers == (3, 4)
    assert layout.shards(7) == [slice(0, 3), slice(3, 7)]


def test_layouts_without_a_worker_or_with_shared_ranks_are_refused():
    with pytest.raises(ConfigurationError, match="at least one worker"):
        AsyncLayout.servers_last(2, 2)
    with pytest.raises(ConfigurationError, match="distinct"):
        AsyncLayout((0, 1), (1, 2))
