"""The built-in task generators, registered in :data:`~dagrow.tasks.core.TASKS` on import.

Each builder is ``builder(rng, n=default, *, option=default, ...) -> TaskData`` with ``rng`` a seeded
``np.random.Generator`` (see dagrow/tasks/core.py): sin50, teacher_student, regression1d, moons,
digits, multisin, bars. Inputs are cast to float32 before the targets are computed (in float64), so every
target is an exact function of the stored x.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .core import TaskData, register_task

__all__ = ["bars", "digits", "moons", "multisin", "regression1d", "sin50", "teacher_student"]


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _gaussian(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return rng.standard_normal((n, dim)).astype(np.float32)


@register_task("sin50")
def sin50(rng: np.random.Generator, n: int = 20000, *, scaled: bool = True) -> TaskData:
    """10 classes: y = argmax_k sin(k s), s = sum(x) / sqrt(50), x ~ N(0, I_50) (TINY slides).

    k = 1..10 and the label is the class index ``k - 1``. ``scaled=False`` gives the literal task of
    the slides, ``s = sum(x)``: s then has standard deviation sqrt(50) ~ 7.1, the label flips every
    fraction of a radian of s, and an MLP stays at chance level on it (a 50:128:128:10 ReLU MLP trained
    on 14,000 samples: 11 % test accuracy, below the 15 % of the majority class). The default
    ``s = sum(x) / sqrt(50) ~ N(0, 1)`` is learnable (58 % test accuracy for the same MLP and data,
    and rising with more data). The default n is 20,000: with 2,000 samples even the thin 50-4-4-10
    network overfits once grown (measured: a grown net's validation loss rose while training loss fell).
    """
    x = _gaussian(rng, n, 50)
    s = x.astype(np.float64).sum(axis=1)
    if scaled:
        s = s / math.sqrt(50)
    k = np.arange(1, 11, dtype=np.float64)
    y = np.sin(s[:, None] * k[None, :]).argmax(axis=1)
    formula = "sum(x)/sqrt(50)" if scaled else "sum(x) (unscaled: chance level for MLPs)"
    return TaskData(
        x,
        y,
        "classification",
        f"sin50: x ~ N(0, I_50), y = argmax_k sin(k s), k = 1..10, s = {formula}; {n} samples",
        output_dim=10,
    )


@register_task("teacher_student")
def teacher_student(
    rng: np.random.Generator, n: int = 1000, *, in_dim: int = 10, hidden: int = 10, out_dim: int = 10
) -> TaskData:
    """Regression on a random 10:10:10 ReLU teacher (GradMax): y = relu(x W1^T) W2^T.

    The teacher has no biases and weights ``W1`` ``[hidden, in_dim]``, ``W2`` ``[out_dim, hidden]``
    drawn from U(-1, 1) (first W1, then W2, then x); they are in ``task.extras`` as ``teacher_w1`` and
    ``teacher_w2``. The default 10:10:10 teacher and n = 1000 follow the GradMax paper (which uses
    its 1000 points for training; here they are split into train/val/test like every task).
    """
    for name, value in (("in_dim", in_dim), ("hidden", hidden), ("out_dim", out_dim)):
        _positive(name, value)
    w1 = rng.uniform(-1.0, 1.0, (hidden, in_dim)).astype(np.float32)
    w2 = rng.uniform(-1.0, 1.0, (out_dim, hidden)).astype(np.float32)
    x = _gaussian(rng, n, in_dim)
    h = np.maximum(x.astype(np.float64) @ w1.T.astype(np.float64), 0.0)
    y = h @ w2.T.astype(np.float64)
    extras = {"teacher_w1": torch.from_numpy(w1), "teacher_w2": torch.from_numpy(w2)}
    description = (
        f"teacher_student: y = relu(x W1^T) W2^T, teacher {in_dim}:{hidden}:{out_dim} "
        f"without bias, weights ~ U(-1, 1), x ~ N(0, I_{in_dim}); {n} samples"
    )
    return TaskData(x, y, "regression", description, extras=extras)


@register_task("regression1d")
def regression1d(rng: np.random.Generator, n: int = 200) -> TaskData:
    """Regression: y = 2 sin(x) + x, x uniform on [-5, 5] (TINY's first experiment).

    x ``[n, 1]``, y ``[n, 1]``, no noise. The default n = 200 is a choice (the paper's set is small
    and its size unstated): enough to see the sine, small enough for full-batch statistics.
    """
    x = rng.uniform(-5.0, 5.0, (n, 1)).astype(np.float32)
    x64 = x.astype(np.float64)
    y = 2.0 * np.sin(x64) + x64
    return TaskData(x, y, "regression", f"regression1d: y = 2 sin(x) + x, x ~ U[-5, 5]; {n} samples")


@register_task("moons")
def moons(rng: np.random.Generator, n: int = 200, *, noise: float = 0.3) -> TaskData:
    """2 classes: scikit-learn's make_moons, two noisy interleaving half circles in the plane.

    x ``[n, 2]``; ``noise`` is the standard deviation of the Gaussian noise added to the points.
    """
    from sklearn.datasets import make_moons

    if not noise >= 0:
        raise ValueError(f"noise must be non-negative, got {noise!r}")
    x, y = make_moons(n_samples=n, noise=noise, random_state=int(rng.integers(2**31 - 1)))
    return TaskData(
        x, y, "classification", f"moons: sklearn make_moons, noise={noise}; {n} samples", output_dim=2
    )


@register_task("digits")
def digits(rng: np.random.Generator, n: int | None = None, *, image: bool = False) -> TaskData:
    """10 classes: scikit-learn's bundled 8x8 handwritten digits (1797 images).

    Pixels are scaled from 0..16 to [0, 1]. x is ``[n, 64]``, or ``[n, 1, 8, 8]`` with ``image=True``
    (for conv nets). ``n`` (default: all 1797) takes a seeded random subset.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target
    if n is not None:
        if n > len(x):
            raise ValueError(f"digits has {len(x)} samples; n={n} is too many")
        keep = np.sort(rng.choice(len(x), size=n, replace=False))
        x, y = x[keep], y[keep]
    if image:
        x = x.reshape(-1, 1, 8, 8)
    shape = "[1, 8, 8]" if image else "64 features"
    return TaskData(
        x,
        y,
        "classification",
        f"digits: sklearn 8x8 digits, {shape} in [0, 1]; {len(x)} samples",
        output_dim=10,
    )


@register_task("multisin")
def multisin(rng: np.random.Generator, n: int = 1000, *, in_dim: int = 4, out_dim: int = 3) -> TaskData:
    """Regression: y_d = sum_i sin((i + 1) x_i + d), x ~ N(0, I_4), 3 outputs.

    i = 0..in_dim - 1 and d = 0..out_dim - 1: input i oscillates at frequency i + 1 and output d
    shifts every phase by d radians.
    """
    _positive("in_dim", in_dim)
    _positive("out_dim", out_dim)
    x = _gaussian(rng, n, in_dim)
    freq = np.arange(1, in_dim + 1, dtype=np.float64)
    phase = np.arange(out_dim, dtype=np.float64)
    y = np.sin((x.astype(np.float64) * freq)[:, :, None] + phase[None, None, :]).sum(axis=1)
    return TaskData(
        x,
        y,
        "regression",
        f"multisin: y_d = sum_i sin((i+1) x_i + d), x ~ N(0, I_{in_dim}), {out_dim} outputs; {n} samples",
    )


@register_task("bars")
def bars(
    rng: np.random.Generator, n: int = 2000, *, size: int = 16, classes: int = 4, noise: float = 0.3
) -> TaskData:
    """Image classes: the orientation of one bar at a random place in a noisy 16x16 image.

    x ``[n, 1, size, size]``: a one-pixel-wide bar of value 1 on a background of 0, plus Gaussian
    noise of standard deviation ``noise``. Class k (k = 0 .. classes - 1) is a bar at angle
    k * 180 / classes degrees (4 classes: horizontal, 45 degrees, vertical, 135 degrees), of random
    length (uniform between size / 4 and size / 2 pixels) centred at a random point of the central
    half of the image, so the class is a local pattern at an unknown place: a convolution sees it
    wherever it is, a linear model on the pixels does not. The classes are balanced (n % classes
    samples are spread over the first classes). Pixels are the rounded points of the segment, 4 per
    pixel of length.
    """
    _positive("size", size)
    _positive("classes", classes)
    if size < 8:
        raise ValueError(f"size must be at least 8 (a bar needs room), got {size}")
    if not noise >= 0:
        raise ValueError(f"noise must be non-negative, got {noise!r}")
    y = rng.permutation(np.arange(n) % classes)
    angle = y * (math.pi / classes)
    length = rng.uniform(size / 4, size / 2, n)
    centre = rng.uniform(size / 4, 3 * size / 4 - 1, (n, 2))  # (row, column)
    steps = 4 * size
    t = np.linspace(-0.5, 0.5, steps + 1)[None, :] * length[:, None]  # [n, steps + 1]
    # a bar at angle theta runs along (row, column) = (-sin theta, cos theta): 45 degrees rises to the right
    rows = np.rint(centre[:, :1] - t * np.sin(angle)[:, None]).astype(np.int64).clip(0, size - 1)
    cols = np.rint(centre[:, 1:] + t * np.cos(angle)[:, None]).astype(np.int64).clip(0, size - 1)
    bars_only = np.zeros((n, size, size), dtype=np.float64)
    bars_only[np.arange(n)[:, None], rows, cols] = 1.0
    x = (bars_only + noise * rng.standard_normal((n, size, size))).astype(np.float32)[:, None]
    return TaskData(
        x,
        y,
        "classification",
        f"bars: {size}x{size} images of one bar in {classes} orientations (0 to 180 degrees), random "
        f"length and place, Gaussian noise {noise}; {n} samples",
        output_dim=classes,
    )
