"""A growth batch streamed in chunks (``growth_batch: all``): the whole training set as a list of
(inputs, targets) pieces that the statistics, the amplitude line search and the rollback check walk
through one at a time.

The statistics are sums over samples (:mod:`dagrow.stats`), so streaming the chunks through one
accumulator gives those of the concatenated batch. A loss is a mean over samples, so the loss of the
whole set is the mean of the chunks' losses weighted by their sizes (:func:`chunked_loss`; exact for
``mse`` and ``cross_entropy``, and for any loss that is a mean over samples of a per-sample term).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Batch = tuple[Any, Any]

CHUNK = 4096
"""Samples per chunk of ``growth_batch: all``."""


class Chunks(list):
    """A growth batch given as several (inputs, targets) chunks, to be streamed rather than
    concatenated (a plain tuple is one batch)."""


def chunks_of(batch: Batch | Chunks) -> list[Batch]:
    """The chunks of ``batch``: itself when it is one (inputs, targets) pair."""
    return list(batch) if isinstance(batch, Chunks) else [batch]


def split(x: Tensor, y: Tensor, size: int = CHUNK) -> Chunks:
    """``(x, y)`` in chunks of ``size`` samples (the last may be smaller)."""
    if size < 1:
        raise ValueError(f"a chunk holds at least one sample, got {size}")
    return Chunks((x[i : i + size], y[i : i + size]) for i in range(0, len(x), size))


def size_of(batch: Batch) -> int:
    x = batch[0]
    return int((x[0] if isinstance(x, tuple | list) else x).shape[0])


def weighted_mean(values: Sequence[float], sizes: Sequence[int]) -> float:
    """sum n_i v_i / sum n_i."""
    return sum(n * v for n, v in zip(sizes, values, strict=True)) / sum(sizes)


@torch.no_grad()
def chunked_loss(
    model: Callable[..., Any], batch: Batch | Chunks, loss_fn: Callable[[Any, Any], Tensor]
) -> float:
    """The mean loss of ``model`` over every sample of ``batch`` (one chunk at a time)."""
    parts = chunks_of(batch)
    values = []
    for x, y in parts:
        args = tuple(x) if isinstance(x, tuple | list) else (x,)
        values.append(float(loss_fn(model(*args), y)))
    return weighted_mean(values, [size_of(b) for b in parts])
