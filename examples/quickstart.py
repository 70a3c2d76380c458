"""Quickstart: decorate a loss function, run it placed across devices, inspect the plan.

The same code as the README's quickstart (``tests/test_readme.py`` checks they agree and that it runs).

    .venv/bin/python examples/quickstart.py
"""

# ruff: noqa: E401, I001
import torch, torch.nn as nn, torch.nn.functional as F
import rich
import graphc

class TwoTowers(nn.Module):                      # two independent branches: room for two devices
    def __init__(self):
        super().__init__()
        self.left = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 512))
        self.right = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 512))
        self.head = nn.Linear(1024, 10)

    def forward(self, x):
        return self.head(torch.cat([self.left(x), self.right(x)], dim=1))

model = TwoTowers()

@graphc.compile(cluster="local", solver="auto", time_limit_s=5)
def loss_fn(net, x, y):
    return F.cross_entropy(net(x), y)

x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))
loss = loss_fn(model, x, y)        # first call traces, places, partitions and runs
loss.backward()                    # gradients reach model's parameters across devices
plan = loss_fn.plan
print(f"predicted step {plan.predicted_step_ms:.1f} ms on {plan.devices_used()}")
rich.print(plan.summary())         # per device: ops, FLOPs, memory, busy time; links; bound and gap
plan.save("plan.json")             # also: plan.to_chrome_trace("trace.json"), plan.gantt("gantt.png"), plan.to_dot("plan.dot")
