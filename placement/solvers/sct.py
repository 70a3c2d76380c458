"""m-SCT: memory-aware Small Communication Time scheduling with favourite children.

SCT (Hanen and Munier, "An approximation algorithm for scheduling dependent tasks on m processors with
small communication delays", Discrete Applied Mathematics 108, 2001; ETFA 1995) solves the linear
relaxation of an integer program that decides, for every task, at most one *favourite child* to run
right after it on the same processor (so that edge's communication is saved), and at most one
favourite parent for every task:

.. math::

    \\min C \\quad\\text{s.t.}\\quad
    t_v \\ge t_u + p_u + c_{uv} x_{uv} \\;\\; \\forall (u,v), \\qquad
    C \\ge t_v + p_v, \\\\
    \\textstyle\\sum_{v \\in succ(u)} x_{uv} \\ge |succ(u)| - 1, \\qquad
    \\sum_{u \\in pred(v)} x_{uv} \\ge |pred(v)| - 1, \\qquad 0 \\le x \\le 1,\\; t \\ge 0,

where ``x_uv = 0`` means ``v`` is ``u``'s favourite child. Rounding ``x < 1/2`` to 0 keeps both
"at most one" rules (two values below 1/2 would break the sums). The list schedule then keeps a
favourite child on its parent's device. Baechi (Jeon et al., SoCC 2020) made it memory-aware as m-SCT:
the favourite child joins its parent only when it fits there, and devices are offered as in m-ETF.

Here ``p_u`` is the node's forward + backward time on its fastest allowed device and ``c_uv`` the
edge's forward transfer plus gradient averaged over device pairs; the LP is solved with OR-Tools GLOP,
and the list schedule is :func:`placement.solvers.etf.etf_schedule` with the favourite parents as homes.
"""

from __future__ import annotations

import numpy as np
from ortools.linear_solver import pywraplp

from placement.errors import PlacementError
from placement.plan import Plan
from placement.solvers.common import Problem
from placement.solvers.etf import etf_schedule, static_priority
from placement.solvers.instance import Instance, instance
from placement.solvers.listsched import Schedule, memory_retries, to_plan


def favourite_parents(inst: Instance, p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n,) each node's favourite parent (-1: none) from the SCT linear program (module docstring).

    An edge that is its producer's only out-edge and its consumer's only in-edge is a favourite in
    some optimal solution (``x = 0`` there relaxes no "at most one" rule and only lowers times), so
    maximal chains of such edges are fixed first and enter the LP as single tasks of their summed
    time: the LP shrinks to the branching structure of the graph.
    """
    n, E = inst.n, inst.num_edges
    home = np.full(n, -1, dtype=np.int64)
    if E == 0:
        return home
    src, dst = inst.src.tolist(), inst.dst.tolist()
    outdeg = np.bincount(inst.src, minlength=n)
    indeg = np.bincount(inst.dst, minlength=n)
    chain = (outdeg[inst.src] == 1) & (indeg[inst.dst] == 1)
    # Chain heads: a node is merged into its predecessor's LP task when the edge between them is a chain edge.
    task = np.arange(n)
    for e in np.flatnonzero(chain).tolist():  # edges sorted by producer, producers in topological order
        home[dst[e]] = src[e]
    for v in range(n):  # topological: a node's predecessor is labelled first
        if home[v] >= 0:
            task[v] = task[home[v]]
    heads, task = np.unique(task, return_inverse=True)
    task = task.reshape(-1)
    T = len(heads)
    p_task = np.bincount(task, weights=np.asarray(p, dtype=float), minlength=T)
    rest = np.flatnonzero(~chain)
    if len(rest) == 0:
        return home
    solver = pywraplp.Solver.CreateSolver("GLOP")
    if solver is None:  # pragma: no cover - GLOP ships with OR-Tools
        raise PlacementError("m-SCT: OR-Tools GLOP is unavailable")
    inf = solver.infinity()
    t = [solver.NumVar(0.0, inf, "") for _ in range(T)]
    x = {int(e): solver.NumVar(0.0, 1.0, "") for e in rest}
    makespan = solver.NumVar(0.0, inf, "C")
    cost = np.asarray(c, dtype=float)
    # A cross edge leaves its producer's task at the producer's finish: the task's start plus the
    # times of the chain members up to and including the producer.
    offset = np.zeros(n)
    for v in range(n):
        offset[v] = (offset[home[v]] if home[v] >= 0 else 0.0) + float(p[v])
    out_edges: dict[int, list[int]] = {}
    in_edges: dict[int, list[int]] = {}
    for e in x:
        u, v = src[e], dst[e]
        ct = solver.Constraint(float(offset[u]), inf)  # t_task(v) - t_task(u) - c x >= offset(u)
        ct.SetCoefficient(t[task[v]], 1.0)
        ct.SetCoefficient(t[task[u]], -1.0 if task[u] != task[v] else 0.0)
        ct.SetCoefficient(x[e], -float(cost[e]))
        out_edges.setdefault(u, []).append(e)
        in_edges.setdefault(v, []).append(e)
    for k in range(T):
        ct = solver.Constraint(float(p_task[k]), inf)
        ct.SetCoefficient(makespan, 1.0)
        ct.SetCoefficient(t[k], -1.0)
    for side in (out_edges, in_edges):
        for edges in side.values():
            if len(edges) > 1:
                ct = solver.Constraint(len(edges) - 1.0, inf)
                for e in edges:
                    ct.SetCoefficient(x[e], 1.0)
    obj = solver.Objective()
    obj.SetCoefficient(makespan, 1.0)
    obj.SetMinimization()
    # The dual simplex is the faster of GLOP's two on this LP (about 1.5x on 10,000 nodes).
    solver.SetSolverSpecificParametersAsString("use_dual_simplex: true")
    status = solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        raise PlacementError(f"m-SCT: the favourite-child LP ended with status {status}")
    for e, var in x.items():
        if var.solution_value() < 0.5:
            home[dst[e]] = src[e]
    return home


def sct_schedule(inst: Instance) -> Schedule:
    """The m-SCT list schedule of ``inst`` (the LP once, the list schedule with growing headroom)."""
    fastest = np.where(inst.allowed, inst.work, np.inf).min(axis=1)
    home = favourite_parents(inst, fastest, inst.mean_round_trip())
    priority = static_priority(inst)
    return memory_retries(lambda h: etf_schedule(inst, priority, home=home, headroom=h))


def m_sct(problem: Problem) -> Plan:
    """Place with m-SCT and record the schedule's order per device."""
    inst = instance(problem)
    sched = sct_schedule(inst)
    return to_plan(problem, inst, sched.dev, solver="m-sct", seq=sched.seq)
