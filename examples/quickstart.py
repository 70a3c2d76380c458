"""Quickstart: decorate a loss function, run it placed across devices, inspect the plan.

    .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

import rich
import torch, torch.nn as nn, torch.nn.functional as F
import graphc

model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

@graphc.compile(cluster="local", solver="auto", time_limit=5)
def loss_fn(net, x, y):
    return F.cross_entropy(net(x), y)

x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
loss = loss_fn(model, x, y)        # first call traces, places, partitions and runs
loss.backward()                    # gradients reach model's parameters across devices
print(loss_fn.plan.predicted_step_ms, loss_fn.plan.devices_used())
rich.print(loss_fn.plan.summary())
