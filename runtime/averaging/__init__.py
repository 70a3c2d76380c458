"""Training strategies that average replicas instead of all-reducing every gradient (graphc issue 16):
synchronous and asynchronous Elastic Averaging SGD, EAMSGD, local SGD and DiLoCo, over
``torch.distributed`` (gloo on CPU, NCCL on GPU). Each wraps the user's model and optimizer in an
ordinary training loop (:mod:`runtime.averaging.strategy`); checkpoints in :mod:`runtime.averaging.checkpoint`.
"""

from runtime.averaging.async_easgd import AsyncEASGD
from runtime.averaging.center import AsyncLayout, CenterServer
from runtime.averaging.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from runtime.averaging.easgd import EAMSGD, EASGD, elastic_exchange, elastic_rates
from runtime.averaging.local_sgd import DiLoCo, LocalSGD
from runtime.averaging.strategy import Strategy, Traffic, ring_allreduce_bytes

__all__ = [
    "AsyncEASGD",
    "AsyncLayout",
    "CenterServer",
    "DiLoCo",
    "EAMSGD",
    "EASGD",
    "LocalSGD",
    "Strategy",
    "Traffic",
    "checkpoint_path",
    "elastic_exchange",
    "elastic_rates",
    "load_checkpoint",
    "ring_allreduce_bytes",
    "save_checkpoint",
]
