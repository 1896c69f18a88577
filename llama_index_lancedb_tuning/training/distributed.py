"""Which process of a data-parallel training run this is, so that one of them writes the side files.

`torchrun` and `accelerate launch` start one process per device and set `RANK`,
`WORLD_SIZE` and `LOCAL_RANK` in each one's environment. The trainer joins them in a
process group, but files other than its own checkpoints (the model, `metrics.json`, the
selection record) are ours to write: once, from rank 0, with the others waiting until they
exist. Read from the environment as well as the process group, so a guard holds before the
trainer has started the group.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the run; 1 when not launched by torchrun or accelerate."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in rank 0, or in the only process: the one that writes files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """Block until every process reaches this point (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cpu_launch() -> bool:
    """A multi-process launch on a machine without a GPU.

    Accelerate sets such a run up as distributed (gloo) only when the trainer is told to use
    the CPU; otherwise each process trains alone and their evaluations disagree.
    """
    return world_size() > 1 and not torch.cuda.is_available()


def local_device() -> str | None:
    """This process's own GPU in a multi-GPU launch; None elsewhere (the model picks its device).

    Without it, every rank would load the model onto GPU 0 before the trainer moves it.
    """
    if world_size() > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None
