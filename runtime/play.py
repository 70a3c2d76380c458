"""Playing a schedule in one process: the local executor's training step.

Every device's work (:func:`runtime.schedule.device_work`) runs as a coroutine, a generator that pauses
where a device of its own would wait: for a message that has not been sent yet, or at the all-reduce
until every replica of its stage is there. Messages go through a mailbox keyed like the distributed
executor's tags (transfer, microbatch, direction). The driver resumes, of the devices that can go on,
the one whose next step comes first by (microbatch, forward before backward, position in the
partition's global order :attr:`~runtime.partition.PartitionedProgram.schedule`), one fx node at a
time in a forward: with one microbatch the forwards run in the traced program's order, so random ops
draw eager's masks from the one CPU generator. Each device's own work runs in the schedule's order.

Forward of microbatch ``k`` on a device: its fx program, node by node, under a communicator
(:mod:`runtime.comm`) whose ``send`` puts the value in the mailbox and whose ``wait`` takes it and
copies it to the device (``Tensor.to``, or a clone between logical devices) as a leaf that requires
grad when its gradient flows back. The output device computes the microbatch's loss.

Backward of microbatch ``k`` on a device: ``torch.autograd.backward`` of its loss and of the values it
sent, with the gradients their consumers sent back; then the gradient of every leaf it received goes
back to the producer through the mailbox. The device walks its forward's messages backwards, gathering
roots while their gradients are in the mailbox; where one is missing (its consumer has not run that
backward yet, as when data flows back and forth between two devices within a microbatch) it
back-propagates the roots gathered so far (keeping the graph), sends the leaf gradients that are then
complete, and pauses. A device of a pipeline (data flowing one way) makes one backward call per
microbatch.

Collectives (:mod:`runtime.schedule`): a device at one pauses until every device of its group is at the
same one, then it runs at once. All-reduce (ring or hierarchical, the same sum): every replica's
gradient of each parameter of the bucket becomes their sum over the replicas, in replica order (the
distributed executor's ``all_reduce``). Parameter servers (:mod:`runtime.servers`), which run here as
devices with work but no program: a reduce sets the server's copy's gradients to the replicas' sum, the
server's optimizer step updates its copy, a broadcast copies it into every replica. Optimizer step: the
device's own optimizer updates the device's parameters (a worker's skips those a server holds).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx
from torch.utils._pytree import tree_map

from runtime import comm
from runtime.comm import active
from runtime.errors import RuntimeFault
from runtime.measure import MemoryTracker
from runtime.partition import PartitionedProgram, Transfer
from runtime.schedule import (
    ALLREDUCE,
    BACKWARD,
    COLLECTIVES,
    FORWARD,
    OPTIMIZER,
    REDUCE,
    Work,
)
from runtime.servers import zero_filled
from runtime.step import LossFn, microbatch_loss, to_device, unflatten_outputs

Key = tuple[int, int, bool]  # (transfer tag, microbatch, is gradient)
FIRST = (-1,)  # the priority of a device just released from a collective


class DeviceInterpreter(fx.Interpreter):
    """Runs one device program node by node, as its caller asks, freeing values after their last use."""

    def __init__(self, module: fx.GraphModule, feeds: Mapping[str, torch.Tensor]) -> None:
        super().__init__(module)
        self.nodes = {n.name: n for n in module.graph.nodes}
        self.feeds = dict(feeds)

    def placeholder(self, target: Any, args: tuple, kwargs: dict) -> Any:
        return self.feeds[target]

    def advance(self, name: str) -> Any:
        node = self.nodes[name]
        value = self.run_node(node)
        self.env[node] = value
        for dead in self.user_to_last_uses.get(node, []):
            del self.env[dead]
        return value


@dataclass
class _Pause:
    """Where a device's coroutine stopped: before a step of the given priority, waiting for a message
    (``message``) or at a collective (``collective``: its work)."""

    priority: tuple
    message: Key | None = None
    collective: Work | None = None


@dataclass
class _Forward:
    """What a device's forward of one microbatch leaves for its backward: the values it sent and the
    leaves it received that carry gradients, in forward order, and its loss (output device)."""

    messages: list[tuple[bool, Transfer, torch.Tensor]] = field(default_factory=list)  # (sent, transfer, tensor)
    loss: torch.Tensor | None = None


class _MailboxComm:
    """The communication ops of one device and microbatch (module docstring)."""

    def __init__(self, play: Play, device: str, microbatch: int, record: _Forward) -> None:
        self.play, self.device, self.microbatch, self.record = play, device, microbatch, record

    def send(self, value: torch.Tensor, to: str, tag: int, grad: bool) -> None:
        transfer = self.play.program.transfer(tag)
        if grad and not value.requires_grad:
            raise RuntimeFault(
                f"{self.device}: {transfer.value!r} was expected to require grad (its gradient comes back from {to}) "
                "but does not; was the model changed after partitioning?"
            )
        self.play.mailbox[(tag, self.microbatch, False)] = value.detach()
        if grad:
            self.record.messages.append((True, transfer, value))

    def recv(self, src: str, tag: int, shape: tuple[int, ...], dtype: torch.dtype, grad: bool) -> int:
        return tag

    def wait(self, handle: int) -> torch.Tensor:
        transfer = self.play.program.transfer(handle)
        value = self.play.take((handle, self.microbatch, False), self.device)
        if transfer.grad and value.is_floating_point():
            value.requires_grad_()
            self.record.messages.append((False, transfer, value))
        return value


class Play:
    """One training step of a partitioned program in this process (module docstring).

    Args:
        program: the partitioned program.
        devices: plan device -> torch device.
        work: device -> its work, in the schedule's order.
        feeds: per microbatch, input name -> tensor.
        targets: per microbatch, the targets (None without).
        loss_fn: the loss, computed on the output device.
        optimizers: device -> the optimizer of its parameters (devices without one take no step); a
            parameter server's is over its copies.
        tracker: the memory tracker to tell which device runs, when memory is measured.
        servers: parameter server -> name -> its copy of the parameters it holds (:mod:`runtime.servers`).

    After :meth:`run`: :attr:`losses` and :attr:`outputs` by microbatch, :attr:`order` the work each
    device ran.
    """

    def __init__(
        self,
        program: PartitionedProgram,
        devices: Mapping[str, torch.device],
        work: Mapping[str, list[Work]],
        feeds: list[dict[str, torch.Tensor]],
        targets: list[Any],
        loss_fn: LossFn,
        optimizers: Mapping[str, torch.optim.Optimizer],
        tracker: MemoryTracker | None = None,
        servers: Mapping[str, Mapping[str, torch.nn.Parameter]] | None = None,
    ) -> None:
        self.program, self.devices, self.work = program, devices, work
        self.servers = servers or {}
        self.feeds, self.targets, self.loss_fn, self.optimizers = feeds, targets, loss_fn, optimizers
        self.tracker = tracker
        self.position = {step: i for i, step in enumerate(program.schedule)}
        self.mailbox: dict[Key, torch.Tensor] = {}
        self.forwards: dict[tuple[str, int], _Forward] = {}
        self.losses: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, Any] = {}
        self.order: dict[str, list[str]] = {d: [] for d in work}

    # -- the driver -------------------------------------------------------------------------------
    def run(self) -> None:
        """Play every device's work to its end."""
        running: dict[str, Iterator[_Pause]] = {d: self._device(d) for d in self.work}
        paused: dict[str, _Pause] = {d: _Pause(FIRST) for d in running}
        rank = {d: i for i, d in enumerate(self.program.ranks)}
        while running:
            self._release_collectives(paused)
            ready = [d for d, p in paused.items() if p.collective is None and (p.message is None or p.message in self.mailbox)]
            if not ready:
                raise RuntimeFault(f"the local step cannot go on: {_stuck(paused)}; was the schedule checked?")
            device = min(ready, key=lambda d: (paused[d].priority, rank[d]))
            if self.tracker is not None:
                self.tracker.current = device
            try:
                paused[device] = next(running[device])
            except StopIteration:
                del running[device], paused[device]
        if self.tracker is not None:
            self.tracker.current = None
        if self.mailbox:
            raise RuntimeFault(f"the local step ended with {len(self.mailbox)} message(s) never received, e.g. {next(iter(self.mailbox))}")

    def _release_collectives(self, paused: dict[str, _Pause]) -> None:
        """Run every collective whose group is all at it, and let its devices go on."""
        for device in list(paused):
            work = paused[device].collective
            if work is None or work.action is None:
                continue
            key, group = work.action.key, work.action.group
            if all(d in paused and paused[d].collective is not None and paused[d].collective.action.key == key for d in group):
                self._collective(work)
                for d in group:
                    paused[d] = _Pause(FIRST)

    def take(self, key: Key, device: str) -> torch.Tensor:
        """The message ``key`` out of the mailbox, as ``device``'s own copy."""
        value = self.mailbox.pop(key)
        target = self.devices[device]
        return value.to(target) if value.device != target else value.clone()

    # -- one device -------------------------------------------------------------------------------
    def _device(self, device: str) -> Iterator[_Pause]:
        for work in self.work[device]:
            self.order[device].append(str(work))
            if work.kind == FORWARD:
                yield from self._forward(device, work.microbatch)
            elif work.kind == BACKWARD:
                yield from self._backward(device, work.microbatch)
            elif work.kind in COLLECTIVES:
                yield _Pause(FIRST, collective=work)
            elif work.kind == OPTIMIZER and device in self.optimizers:
                self.optimizers[device].step()

    def _forward(self, device: str, k: int) -> Iterator[_Pause]:
        stage = self.program.stage_device(device)
        part = self.program.programs[device]
        on = self.devices[device]
        interpreter = DeviceInterpreter(part.module, {n: self.feeds[k][n].to(on) for n in part.inputs})
        record = self.forwards[(device, k)] = _Forward()
        communicator = _MailboxComm(self, device, k, record)
        flat: Any = ()
        for node in part.module.graph.nodes:
            if node.target is not comm.recv:  # posting a receive does nothing here: no need to wait
                priority = (k, 0, self.position[(stage, node.name)])
                key = (node.args[0].kwargs["tag"], k, False) if node.target is comm.wait else None
                yield _Pause(priority, message=key)
            with active(communicator):
                value = interpreter.advance(node.name)
            if node.op == "output":
                flat = value
        if stage == self.program.output_device:
            outputs = unflatten_outputs(self.program, flat)
            record.loss = microbatch_loss(self.loss_fn, outputs, to_device(self.targets[k], on), len(self.feeds))
            self.losses[k] = record.loss.detach()
            self.outputs[k] = tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, outputs)

    def _backward(self, device: str, k: int) -> Iterator[_Pause]:
        record = self.forwards.pop((device, k))
        priority = (k, 1, 0)
        roots: list[torch.Tensor] = []
        gradients: list[torch.Tensor] = []
        if record.loss is not None and record.loss.requires_grad:
            roots.append(record.loss)
            gradients.append(torch.ones_like(record.loss))
        complete: list[tuple[Transfer, torch.Tensor]] = []  # received leaves whose gradient is whole
        for sent, transfer, tensor in reversed(record.messages):
            if not sent:
                complete.append((transfer, tensor))
                continue
            key = (transfer.tag, k, True)
            if key not in self.mailbox:
                _backpropagate(roots, gradients, keep_graph=True)
                self._send_gradients(complete, k)
                yield _Pause(priority, message=key)
            roots.append(tensor)
            gradients.append(self.take(key, device))
        _backpropagate(roots, gradients, keep_graph=False)
        self._send_gradients(complete, k)

    def _send_gradients(self, leaves: list[tuple[Transfer, torch.Tensor]], k: int) -> None:
        """Send each leaf's gradient back to its producer (zeros where it reached no root)."""
        for transfer, leaf in leaves:
            self.mailbox[(transfer.tag, k, True)] = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            leaf.grad = None
        leaves.clear()

    def _collective(self, work: Work) -> None:
        """Run one collective of the schedule, its group all at it (module docstring)."""
        action = work.action
        assert action is not None
        if work.kind == ALLREDUCE:
            self._sum_gradients(list(action.group), work.params)
            return
        root = action.root  # type: ignore[attr-defined]  # a Reduce or a Broadcast
        replicas = [d for d in action.group if d != root]
        held = self.servers[root]
        with torch.no_grad():
            for name in work.params:
                copies = [self.program.programs[r].parameters[name] for r in replicas]
                if work.kind == REDUCE:
                    held[name].grad = sum(g.to(held[name].device) for g in zero_filled(copies))
                else:
                    for p in copies:
                        p.copy_(held[name])

    def _sum_gradients(self, replicas: list[str], names: tuple[str, ...]) -> None:
        """Every replica's gradient of each parameter ``names`` becomes the replicas' sum (a parameter
        without a gradient has none on every replica: they run the same program)."""
        for name in names:
            copies = [self.program.programs[r].parameters[name] for r in replicas]
            if copies[0].grad is None:
                continue
            total = copies[0].grad.clone()
            for p in copies[1:]:
                total += p.grad.to(total.device)
            for p, replica in zip(copies, replicas):
                p.grad = total.to(self.devices[replica], copy=True)


def _backpropagate(roots: list[torch.Tensor], gradients: list[torch.Tensor], keep_graph: bool) -> None:
    """Back-propagate the roots with their gradients, then forget them; ``keep_graph`` when later calls
    may go through the same part of the graph."""
    if roots:
        torch.autograd.backward(roots, gradients, retain_graph=keep_graph)
    roots.clear()
    gradients.clear()


def _stuck(paused: Mapping[str, _Pause]) -> str:
    def why(p: _Pause) -> str:
        return f"at {p.collective}" if p.collective else f"waits for message {p.message}"

    return "; ".join(f"{d} {why(p)}" for d, p in paused.items())

