"""graphc.frontend.interpreter: one fx interpreter for annotation, value propagation and profiling, which
records what it learns in node.meta and names the node and source line of a failing op."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import runtime.values
from graphc import trace
from graphc.frontend.interpreter import NodeInterpreter
from graphc.ir.errors import TraceError
from runtime.values import InputSpec, input_specs, propagate


class _FrozenHead(nn.Module):
    """A trainable layer, then a frozen one, then an argmax: values with and without gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(8, 4).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.body(x), self.head(x), self.head(x).argmax(-1)


def _node(gm: fx.GraphModule, name: str) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.name == name)


def test_a_fake_run_records_every_value_as_training_sees_it_without_touching_real_memory():
    with torch.device("meta"):  # parameters and input without memory
        gm = fx.symbolic_trace(_FrozenHead())
        x = torch.empty(3, 8)
    NodeInterpreter(gm, fake=True).run(x)
    meta = {n.name: n.meta.get("tensor_meta") for n in gm.graph.nodes}
    assert tuple(meta["body"].shape) == (3, 16) and meta["body"].requires_grad
    assert tuple(meta["head"].shape) == (3, 4) and not meta["head"].requires_grad  # frozen weights
    assert meta["argmax"].dtype == torch.int64 and not meta["x"].requires_grad
    assert len({n.meta["graphc_run"] for n in gm.graph.nodes}) == 1  # one run recorded all of them


def test_trace_leaves_each_ops_costs_and_value_in_node_meta():
    program = trace(nn.Sequential(nn.Linear(8, 16), nn.ReLU()), torch.randn(4, 8), granularity="op")
    linear = _node(program.graph_module, "linear")
    cost = linear.meta["graphc_cost"]
    assert cost.fwd_flops == program.graph.node("linear").fwd_flops == 2 * 4 * 8 * 16
    assert cost.output_shapes == [[4, 16]] and tuple(linear.meta["tensor_meta"].shape) == (4, 16)


def test_a_failing_op_names_the_node_and_the_models_source_line():
    class Project(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(4, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w  # the line the error must point at

    program = trace(Project(), torch.randn(3, 4), granularity="op")
    with pytest.raises(TraceError) as info:  # inputs of another width
        NodeInterpreter(program.graph_module, fake=True).run(torch.randn(3, 5))
    message = str(info.value)
    assert "'matmul'" in message and f"{__file__}:" in message and "the line the error must point at" in message


def test_value_propagation_reads_the_facts_annotation_recorded(monkeypatch):
    program = trace(_FrozenHead(), torch.randn(3, 8), granularity="op")
    gm = program.graph_module
    specs = input_specs(gm)

    def no_run(*args: object) -> None:
        raise AssertionError("propagate ran the program although node.meta had the facts")

    monkeypatch.setattr(runtime.values.NodeInterpreter, "run", no_run)
    recorded = propagate(gm, specs)
    monkeypatch.undo()
    for node in gm.graph.nodes:
        node.meta.pop("graphc_run", None)  # facts of no run: propagate must run the program
    assert propagate(gm, specs) == recorded
    assert recorded["linear"].requires_grad and not recorded["linear_1"].requires_grad  # the frozen head
    assert recorded["argmax"].dtype == torch.int64


def test_value_propagation_reruns_for_other_input_shapes():
    program = trace(nn.Sequential(nn.Linear(8, 16), nn.ReLU()), torch.randn(4, 8), granularity="op")
    gm = program.graph_module
    halves = propagate(gm, [InputSpec((2, 8), torch.float32)])
    assert halves["relu"].shape == (2, 16)
    full = propagate(gm, input_specs(gm) or [])  # the recorded run is now the one on (2, 8): runs again
    assert full["relu"].shape == (4, 16)
