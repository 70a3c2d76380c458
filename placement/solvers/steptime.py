"""The training step of a list schedule, timed pass by pass as the simulator runs it.

The list schedulers decide with the training-folded model of :mod:`placement.solvers.listsched`: a
node takes forward + backward time at once, a cut edge its transfer and then its gradient. The
simulator runs the passes apart: on each device every forward first, then the backwards in reverse
order, none before the device's last forward (GPipe), and a gradient goes back once the last consumer
on its device has finished its backward. Where a device's forwards wait for other devices, its
backward pass starts later than the fold says; and the fold books a gradient right after its tensor,
where it may hold a link a forward transfer needs (or leave it free) at a time the passes do not. On
the zoo GNMT on ``dgx1-v100`` m-ETF's folded schedule ends at 65.9 ms, timed pass by pass at 67.9 ms,
and the simulator runs it in 73.1 ms; on small random graphs the folded schedule was up to 12% below
the simulated step, pass by pass 4% (``tests/placement/solvers/test_solvers_linkbook.py``).

:func:`step_ms` times the schedule's placement and per-device order pass by pass, with the link
bookings of :class:`~placement.solvers.linkbook.LinkBook`: the forward tasks in the order the schedule
started them, each once its inputs are there (forward transfers only); then the backward tasks in the
reverse order, each on its device after that device's last forward and once the gradients of its
consumers are there. Its end is the step a heuristic's plan records (``settings["schedule_ms"]``).
Without a derived backward pass (inference, or a graph of explicit backward nodes) the schedule's own
makespan is the step.
"""

from __future__ import annotations

import numpy as np

from placement.solvers.listsched import Schedule


def step_ms(sched: Schedule) -> float:
    """The step of ``sched``'s placement and order, forward pass then backward pass (module docstring)."""
    inst = sched.inst
    if not inst.has_bwd:
        return sched.makespan()
    order = sorted(range(inst.n), key=lambda v: (float(sched.start[v]), v))
    dev = sched.dev
    fwd = Schedule(inst, work=inst.fwd, gradients=False)
    fwd.ledger.unbounded = True  # the placement was checked when it was made
    for v in order:
        fwd.append(v, int(dev[v]))
    links, fin = fwd.links, fwd.finish
    free = fwd.free.tolist()  # each device's last forward: no backward starts before it
    bwd, needs_grad = inst.bwd, inst.needs_grad
    end = np.zeros(inst.n)
    for v in reversed(order):
        d = int(dev[v])
        ready = float(fin[v])
        if needs_grad[v]:
            back: dict[int, tuple[float, float]] = {}  # consumer device -> (last consumer's end, ms back)
            for w, e in inst.succs[v]:
                b = int(dev[w])
                if b == d:
                    ready = max(ready, float(end[w]))
                else:
                    last, ms = back.get(b, (0.0, 0.0))
                    back[b] = (max(last, float(end[w])), max(ms, inst.comm(e, b, d)))
            for b, (last, ms) in back.items():  # one gradient per device, when its last consumer is done
                ready = max(ready, links.send(b, d, last, ms))
        start = links.run(d, max(ready, free[d]), max(ready, free[d]) + float(bwd[v, d]))
        end[v] = start + float(bwd[v, d])
        free[d] = max(free[d], float(end[v]))
    return float(max(end.max(initial=0.0), fin.max(initial=0.0)))
