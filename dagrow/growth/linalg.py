"""Small symmetric linear algebra for the proposals, on one thread, in float64.

S^+ and S^{-1/2} of a symmetric positive semi-definite S come from its eigendecomposition
``S = Q diag(e) Q^T``, keeping only the eigenpairs with ``e > rel * max(e)`` (the numerical threshold):
``S^+ = Q diag(1/e) Q^T`` and ``S^{-1/2} = Q diag(e^{-1/2}) Q^T`` over the kept pairs. Stacks of equal
shapes go through one batched LAPACK call (:func:`batch_groups`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "batch_groups",
    "eigh_sym",
    "inv_sqrt_psd",
    "keep_above",
    "pinv_psd",
    "single_threaded",
    "sum_of_squares",
    "svd",
]


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run LAPACK (and, in :func:`~dagrow.growth.proposals.propose` and
    :func:`~dagrow.growth.proposals.propose_all`, every product) on one thread: the matrices here are
    small (the width of a site's features), where threads gain nothing, and MKL's threaded eigh/svd can
    stall for milliseconds per call when the cores are busy (seen: 10 ms instead of 0.1 ms for a
    48 x 48 eigh with 2 threads under load; likewise 4 ms instead of 15 us for a 49 x 49 product). With
    wide sites the single-threaded eighs and SVDs cost the most anyway."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def svd(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The thin SVD ``A = U diag(s) Vh``: ``U`` [m, k], ``s`` [k] descending, ``Vh`` [k, n], k = min(m, n)."""
    with single_threaded():
        return torch.linalg.svd(A, full_matrices=False)


def eigh_sym(S: Tensor) -> tuple[Tensor, Tensor]:
    """eigh of the symmetric part of S (or of each matrix of a stack): eigenvalues ascending."""
    with single_threaded():
        return torch.linalg.eigh((S + S.mT) / 2)


def keep_above(e: Tensor, Q: Tensor, rel: float, values: list[float] | None = None) -> tuple[Tensor, Tensor]:
    """The eigenpairs above ``rel * max eigenvalue`` (``e`` [k'], ``Q`` [n, k']). eigh sorts the
    eigenvalues in ascending order, so the kept ones are a suffix (found on a list, which costs less
    than a mask and a boolean index; ``values`` is ``e.tolist()`` when the caller has it). The
    eigenvectors come back in row-major order, as a boolean index returns them, so that the products
    with them round alike."""
    values = e.tolist() if values is None else values
    top = values[-1] if values else 0.0
    first = bisect.bisect_right(values, max(rel * top, 0.0)) if top > 0 else len(values)
    return e[first:], Q[:, first:].contiguous()


def _eig_parts(S: Tensor, rel: float) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of a symmetric PSD matrix above ``rel * max eigenvalue``."""
    return keep_above(*eigh_sym(S), rel)


def pinv_psd(S: Tensor, rel: float) -> Tensor:
    """S^+ = Q diag(1/e) Q^T over the eigenpairs kept by ``rel`` (S symmetric PSD, [n, n])."""
    e, Q = _eig_parts(S, rel)
    return (Q / e) @ Q.T


def inv_sqrt_psd(S: Tensor, rel: float) -> Tensor:
    """S^{-1/2} = Q diag(e^{-1/2}) Q^T over the eigenpairs kept by ``rel`` (S symmetric PSD, [n, n])."""
    e, Q = _eig_parts(S, rel)
    return (Q * e.rsqrt()) @ Q.T


def batch_groups(inputs: Mapping[Any, Tensor]) -> list[list[Any]]:
    """The keys of ``inputs`` in groups of tensors of one shape, to stack for one batched LAPACK call:
    on the CPU the batched call runs the same routine on each matrix (the results are the same) and
    saves each call's fixed cost, which dominates for matrices of a few dozen rows. Elsewhere one
    group per key (a GPU may pick another algorithm for a batch, with other signs)."""
    groups: dict[Any, list[Any]] = {}
    for key, value in inputs.items():
        group = tuple(value.shape) if value.device.type == "cpu" else key
        groups.setdefault(group, []).append(key)
    return list(groups.values())


def sum_of_squares(values: Iterable[float]) -> float:
    """``sum v^2``, exactly rounded (``math.fsum``)."""
    return math.fsum(v * v for v in values)
