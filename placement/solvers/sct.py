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
"at most one" rules (two values below 1/2 would break the sums). The list schedule then gives a
favourite child first call on its parent's device. Baechi (Jeon et al., SoCC 2020) made it
memory-aware as m-SCT: the favourite child joins its parent only when it fits there, and devices are
offered as in m-ETF. As in Baechi, the favourite child takes its parent's device only where it starts
there no later than elsewhere: it is offered to every device, and on its parent's it goes before any
other task that could start at the same time, and only while its parent is the last task there (a
device keeps its place for the favourite child of the task it ran last: Baechi's rule; without it,
307.0 ms against 280.6 ms on the zoo GNMT on the four GPUs of ``pcie-4gpu``). (Offering it to its
parent's device alone, whatever the wait, was 31% slower on that graph when it was tried, before the
last-task rule: 384.6 ms against 293.2 ms.)

Here ``p_u`` is the node's forward + backward time on its fastest allowed device and ``c_uv`` the
edge's forward transfer plus gradient averaged over device pairs; the list schedule is
:func:`placement.solvers.etf.etf_schedule` with the favourite parents as homes.

The LP is solved with OR-Tools GLOP in a smaller form with the same optimum (:func:`favourite_lp`;
``tests/test_solvers_sct.py`` checks the optimum against the formulation above on random graphs):

1. *Chains.* An edge that is its producer's only out-edge and its consumer's only in-edge appears in
   no "at most one" row (each sum has one term and bound 0), so ``x = 0`` there only lowers times: it
   is fixed as a favourite, and every maximal chain of such edges becomes one task of its summed time
   with one start variable. The remaining (cross) edges leave a chain from its last node (any other
   node's only out-edge is a chain edge) and enter it at its first.
2. *Makespan rows.* ``C >= t_k + p_k`` is kept only for tasks with no out-edge: for a cross edge
   ``(k, j)``, ``t_j + p_j >= t_k + p_k + c x + p_j >= t_k + p_k`` (all times are non-negative), so
   every other task's row follows from a sink's.
3. *Simplex.* GLOP's dual simplex applied to the dual LP: the fastest of the GLOP settings tried on
   this LP (0.27 s against 0.68 s for GLOP's defaults on the 10,000-node benchmark graph, after 1
   and 2). Its optimal vertex may differ from another setting's; any optimal vertex rounds to valid
   favourites.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ortools.linear_solver import pywraplp

from placement.errors import PlacementError
from placement.plan import Plan
from placement.problem import Problem
from placement.solvers.baselines import heuristic_plan
from placement.solvers.etf import etf_schedule, static_priority
from placement.solvers.instance import Instance, instance
from placement.solvers.listsched import Schedule, memory_retries

#: GLOP settings for the favourite-child LP (module docstring, point 3).
GLOP_PARAMETERS = "use_dual_simplex: true solve_dual_problem: ALWAYS_DO"


@dataclass(frozen=True)
class FavouriteLP:
    """The solved favourite-child LP.

    Attributes:
        makespan: the LP optimum ``C`` (ms), a lower bound of SCT's relaxed schedule length.
        home: (n,) each node's favourite parent after rounding (-1: none).
    """

    makespan: float
    home: np.ndarray


def chain_tasks(inst: Instance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal chains (module docstring, point 1): ``(home, task, chain)``.

    ``home[v]`` is ``v``'s predecessor when the edge between them is a chain edge (else -1);
    ``task[v]`` numbers ``v``'s chain (0 .. tasks-1, in topological order of the chains' heads);
    ``chain[e]`` says edge ``e`` is a chain edge.
    """
    n = inst.n
    home = np.full(n, -1, dtype=np.int64)
    if inst.num_edges == 0:
        return home, np.arange(n), np.zeros(0, dtype=bool)
    outdeg = np.bincount(inst.src, minlength=n)
    indeg = np.bincount(inst.dst, minlength=n)
    chain = (outdeg[inst.src] == 1) & (indeg[inst.dst] == 1)
    home[inst.dst[chain]] = inst.src[chain]
    head = np.arange(n)
    for v in np.flatnonzero(home >= 0).tolist():  # topological: a node's predecessor is labelled first
        head[v] = head[home[v]]
    _, task = np.unique(head, return_inverse=True)
    return home, task.reshape(-1), chain


def favourite_lp(inst: Instance, p: np.ndarray, c: np.ndarray) -> FavouriteLP:
    """Solve the favourite-child LP for node times ``p`` (n,) and edge costs ``c`` (E,), in the reduced
    form of the module docstring, and round it: ``x_uv < 1/2`` makes ``u`` the favourite parent of ``v``."""
    home, task, chain = chain_tasks(inst)
    T = int(task.max(initial=-1)) + 1
    p_task = np.bincount(task, weights=np.asarray(p, dtype=float), minlength=T)
    cross = np.flatnonzero(~chain)
    if len(cross) == 0:
        return FavouriteLP(float(p_task.max(initial=0.0)), home)
    solver = pywraplp.Solver.CreateSolver("GLOP")
    if solver is None:  # pragma: no cover - GLOP ships with OR-Tools
        raise PlacementError("m-SCT: OR-Tools GLOP is unavailable")
    inf = solver.infinity()
    t = [solver.NumVar(0.0, inf, "") for _ in range(T)]
    makespan = solver.NumVar(0.0, inf, "C")
    src, dst = inst.src[cross], inst.dst[cross]
    tu, tv = task[src].tolist(), task[dst].tolist()
    lower = p_task[task[src]].tolist()  # a cross edge leaves its chain at the chain's end
    cost = np.asarray(c, dtype=float)[cross].tolist()
    x = []
    for a, b, lo, ce in zip(tu, tv, lower, cost):  # t_b - t_a - c x >= p_a
        xe = solver.NumVar(0.0, 1.0, "")
        row = solver.Constraint(lo, inf)
        row.SetCoefficient(t[b], 1.0)
        row.SetCoefficient(t[a], -1.0)
        row.SetCoefficient(xe, -ce)
        x.append(xe)
    for k in np.setdiff1d(np.arange(T), task[src]).tolist():  # C - t_k >= p_k for tasks without out-edges
        row = solver.Constraint(float(p_task[k]), inf)
        row.SetCoefficient(makespan, 1.0)
        row.SetCoefficient(t[k], -1.0)
    for ends in (src, dst):  # at most one favourite child (producers), one favourite parent (consumers)
        order = np.argsort(ends, kind="stable")
        _, first, count = np.unique(ends[order], return_index=True, return_counts=True)
        for f, k in zip(first[count > 1].tolist(), count[count > 1].tolist()):
            row = solver.Constraint(k - 1.0, inf)
            for i in order[f : f + k].tolist():
                row.SetCoefficient(x[i], 1.0)
    objective = solver.Objective()
    objective.SetCoefficient(makespan, 1.0)
    objective.SetMinimization()
    solver.SetSolverSpecificParametersAsString(GLOP_PARAMETERS)
    status = solver.Solve()
    if status != pywraplp.Solver.OPTIMAL:
        raise PlacementError(f"m-SCT: the favourite-child LP ended with status {status}, not optimal")
    favourite = np.fromiter((xe.solution_value() < 0.5 for xe in x), dtype=bool, count=len(x))
    home[dst[favourite]] = src[favourite]
    return FavouriteLP(makespan.solution_value(), home)


def favourite_parents(inst: Instance, p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n,) each node's favourite parent (-1: none): :func:`favourite_lp`'s rounding."""
    return favourite_lp(inst, p, c).home


def sct_schedule(inst: Instance) -> Schedule:
    """The m-SCT list schedule of ``inst`` (the LP once, the list schedule with growing headroom)."""
    fastest = np.where(inst.allowed, inst.work, np.inf).min(axis=1)
    home = favourite_parents(inst, fastest, inst.mean_round_trip())
    priority = static_priority(inst)
    return memory_retries(lambda h: etf_schedule(inst, priority, home=home, headroom=h))


def m_sct(problem: Problem) -> Plan:
    """Place with m-SCT (one device where that schedule is no longer) and record the schedule's order per device."""
    inst = instance(problem)
    return heuristic_plan(problem, inst, sct_schedule(inst), "m-sct")
