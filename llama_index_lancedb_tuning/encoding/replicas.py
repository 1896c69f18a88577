"""What the runtimes' parallel encoding shares: the replicas one model keeps, and the batch order.

Torch and ONNX Runtime models both keep their replicas in a `ReplicaPool`, so the two runtimes'
modules import this one and not each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

BatchEncoder = Callable[[list[str]], np.ndarray]


def longest_first_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Positions of `texts` in batches, longest texts first: each batch pads little, and the last
    batches are the quick ones."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class ReplicaPool:
    """The single-threaded copies of one model that encode long lists in parallel, made once and kept
    by the embedding that owns them."""

    encoders: list[BatchEncoder] = field(default_factory=list)
    # One parallel encode per model at a time: two would share the replicas' tokenizers (and the cores).
    lock: threading.Lock = field(default_factory=threading.Lock)
