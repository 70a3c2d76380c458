"""``graphc.compile(parallel=, sync=)``: the differentiable call runs pipelines only; replicas are refused
at construction with where to plan and train them instead."""

from __future__ import annotations

import pytest
from torch import nn

import graphc


@pytest.mark.parametrize(
    ("parallel", "sync"),
    [("data", None), ("hybrid", None), ("auto", None), ("pipeline", "ring")],
)
def test_replicas_are_refused_with_where_to_train_them(parallel, sync):
    with pytest.raises(
        graphc.GraphcError,
        match=r"cannot sum the gradients of data-parallel replicas.*graphc run --plan",
    ):
        graphc.compile(
            nn.Linear(4, 2),
            objective="throughput",
            parallel=parallel,
            sync=sync,
            progress=False,
        )


def test_pipeline_is_the_default_layout():
    compiled = graphc.compile(nn.Linear(4, 2), objective="throughput", parallel="pipeline", progress=False)
    assert compiled.objective == "throughput"
