"""Built-in data sets and user data, as seeded train/validation/test splits.

A :class:`Task` holds three :class:`Split` s of tensors and what a training loop needs to know about
them: the kind (classification or regression), the loss, the input shape, the output width and the
metric. Built-in tasks come from a small registry (:func:`register_task`, :func:`list_tasks`,
:func:`task_info`) and are made with :func:`make_task`; user data (``.npz`` or ``.csv``) is read by
:func:`load_data`.

Every random draw comes from ``np.random.default_rng`` seeded by the task's ``seed``: the same seed
gives bit-identical tensors, whatever torch's global RNG is doing. The seed is split in two streams
(``np.random.SeedSequence(seed).spawn(2)``), one for generating the data and one for shuffling it into
the splits.

Shapes (``n`` is the number of samples of a split):

- ``x``: float32 ``[n, *input_shape]``;
- ``y``: int64 ``[n]`` (class indices ``0 .. output_dim - 1``) for classification, float32
  ``[n, output_dim]`` for regression.
"""

from __future__ import annotations

import csv
import difflib
import inspect
import math
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Kind = Literal["classification", "regression"]
SplitName = Literal["train", "val", "test"]

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
"""Default (train, val, test) fractions of the samples."""

MAX_INFERRED_CLASSES = 100
"""Integer targets with more distinct values than this are treated as regression unless told otherwise."""

__all__ = [
    "DEFAULT_FRACTIONS",
    "MAX_INFERRED_CLASSES",
    "DataError",
    "Split",
    "Task",
    "TaskData",
    "TaskInfo",
    "list_tasks",
    "load_data",
    "make_task",
    "register_task",
    "task_info",
]


class DataError(ValueError):
    """A data file cannot be used; the message names the file (and, for csv, the line)."""


# --------------------------------------------------------------------------------------------------
# Splits and tasks
# --------------------------------------------------------------------------------------------------


def _describe(t: Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a task: ``x`` float32 ``[n, ...]``; ``y`` int64 ``[n]`` or float32 ``[n, d]``."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} samples but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return f"Split(x={_describe(self.x)}, y={_describe(self.y)})"


@dataclass(frozen=True, eq=False)
class Task:
    """A supervised task split into train / val / test.

    ``input_shape`` excludes the batch dimension (``(50,)`` for sin50, ``(1, 8, 8)`` for image
    digits). ``output_dim`` is the number of classes (classification) or of regression targets.
    ``extras`` holds task-specific data, for example the teacher's weights (``teacher_w1``
    ``[hidden, in]``, ``teacher_w2`` ``[out, hidden]``) or the original class labels of user data
    (``classes``: ``classes[i]`` is the label value of class index ``i``).
    """

    name: str
    kind: Kind
    loss: Literal["cross_entropy", "mse"]
    input_shape: tuple[int, ...]
    output_dim: int
    train: Split
    val: Split
    test: Split
    description: str
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = {"classification": "cross_entropy", "regression": "mse"}[self.kind]
        if self.loss != expected:
            raise ValueError(f"a {self.kind} task uses the {expected} loss, not {self.loss}")

    def __repr__(self) -> str:
        sizes = "/".join(str(len(s)) for s in (self.train, self.val, self.test))
        return (
            f"Task(name={self.name!r}, kind={self.kind!r}, input_shape={self.input_shape}, "
            f"output_dim={self.output_dim}, train/val/test={sizes})"
        )

    @property
    def metric_name(self) -> Literal["accuracy", "mse"]:
        """``"accuracy"`` (higher is better) for classification, ``"mse"`` (lower is better) otherwise."""
        return "accuracy" if self.kind == "classification" else "mse"

    def split(self, name: str) -> Split:
        """The split called ``"train"``, ``"val"`` or ``"test"``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected 'train', 'val' or 'test'")
        return getattr(self, name)

    def batches(
        self,
        split: str = "train",
        batch_size: int | None = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches that cover every sample of ``split`` exactly once.

        ``batch_size=None`` yields the whole split as one batch; otherwise the last batch may be
        smaller. With ``shuffle`` the order is a permutation drawn from ``np.random.default_rng(seed)``
        (pass the epoch number as ``seed`` for a new order each epoch). ``dtype`` converts ``x`` (and
        ``y`` for regression; class indices stay int64); ``device`` moves both.
        """
        data = self.split(split)
        n = len(data)
        if batch_size is None:
            batch_size = max(n, 1)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        order = torch.from_numpy(np.random.default_rng(seed).permutation(n)) if shuffle else None
        y_dtype = dtype if self.kind == "regression" else None
        for start in range(0, n, batch_size):
            if order is None:
                xb, yb = data.x[start : start + batch_size], data.y[start : start + batch_size]
            else:
                index = order[start : start + batch_size]
                xb, yb = data.x[index], data.y[index]
            yield xb.to(device=device, dtype=dtype), yb.to(device=device, dtype=y_dtype)

    def metric(self, output: Tensor, y: Tensor) -> float:
        """Accuracy (classification) or mean squared error (regression) of a model's output.

        Classification: ``output`` is logits ``[n, classes]`` (or predicted indices ``[n]``) and ``y``
        class indices ``[n]``. Regression: ``output`` and ``y`` are ``[n, d]``; the mse is the mean
        over samples and outputs. An empty batch gives ``nan``.
        """
        output, y = output.detach(), y.detach()
        if self.kind == "classification":
            predicted = output.argmax(dim=-1) if output.ndim == y.ndim + 1 else output
            if predicted.shape != y.shape:
                raise ValueError(f"output {list(output.shape)} does not match labels {list(y.shape)}")
            if y.numel() == 0:
                return math.nan
            return (predicted.to(y.device) == y).double().mean().item()
        if output.shape != y.shape:
            raise ValueError(f"output {list(output.shape)} does not match targets {list(y.shape)}")
        if y.numel() == 0:
            return math.nan
        return (output.double() - y.to(output.device).double()).square().mean().item()


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskData:
    """What a task builder returns: all samples, before splitting.

    ``x`` ``[n, ...]`` and ``y`` (``[n]`` integer class indices, or ``[n]`` / ``[n, d]`` floats) are
    numpy arrays; ``make_task`` converts and splits them.
    """

    x: np.ndarray
    y: np.ndarray
    kind: Kind
    description: str
    output_dim: int | None = None  # classes; default max(y) + 1 (classification) or y's width
    extras: Mapping[str, Any] = field(default_factory=dict)


Builder = Callable[..., TaskData]


@dataclass(frozen=True)
class TaskInfo:
    """A registered task: its builder, one-line summary and options (name -> default)."""

    name: str
    builder: Builder
    summary: str
    default_n: int | None
    options: Mapping[str, Any]


_TASKS: dict[str, TaskInfo] = {}


def register_task(name: str, *, summary: str | None = None) -> Callable[[Builder], Builder]:
    """Function decorator: register ``builder(rng, n=default, *, option=default, ...) -> TaskData``.

    ``rng`` is a ``np.random.Generator``; ``n`` the total number of samples (train + val + test);
    the keyword-only parameters are the task's options. ``summary`` defaults to the first line of the
    builder's docstring.
    """

    def deco(builder: Builder) -> Builder:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered")
        params = inspect.signature(builder).parameters
        n_param = params.get("n")
        if n_param is None:
            raise TypeError(f"task builder {builder.__name__} must take the number of samples n")
        options = {p.name: p.default for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        doc = summary or (inspect.getdoc(builder) or name).strip().splitlines()[0]
        default_n = None if n_param.default is inspect.Parameter.empty else n_param.default
        _TASKS[name] = TaskInfo(name, builder, doc, default_n, options)
        return builder

    return deco


def list_tasks() -> list[str]:
    """Names of the registered tasks, in registration order."""
    return list(_TASKS)


def _did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def task_info(name: str) -> TaskInfo:
    """The registry entry of a task (``ValueError`` listing the available tasks if unknown)."""
    if name not in _TASKS:
        known = list_tasks()
        raise ValueError(
            f"unknown task {name!r}{_did_you_mean(name, known)}; available tasks: {', '.join(known)}"
        )
    return _TASKS[name]


def make_task(
    name: str,
    *,
    seed: int = 0,
    n: int | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    **options: Any,
) -> Task:
    """Generate a built-in task and split it (seeded, deterministic).

    ``n`` is the total number of samples before splitting (``None``: the task's default);
    ``fractions`` the (train, val, test) shares. Unknown names and options raise ``ValueError``
    listing what exists.
    """
    info = task_info(name)
    for key in options:
        if key not in info.options:
            known = list(info.options)
            raise ValueError(
                f"task {name!r} has no option {key!r}{_did_you_mean(key, known)}; "
                f"its options: {', '.join(known) or 'none'}"
            )
    _check_seed(seed)
    data_seq, split_seq = np.random.SeedSequence(seed).spawn(2)
    kwargs = dict(options)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        kwargs["n"] = n
    data = info.builder(np.random.default_rng(data_seq), **kwargs)
    return _build_task(name, data, np.random.default_rng(split_seq), fractions)


def fit_task(task: Task, spec) -> Task:
    """``task`` checked against a spec (a ``GraphSpec``) before any training: one input, one output,
    the output width equal to the classes (classification) or the targets (regression). Flat features
    are reshaped to the spec's input shape when the sizes agree (digits' 64 pixels to ``[1, 8, 8]``);
    any other mismatch raises :class:`DataError` naming the spec, the input or output and both shapes.
    """
    from .graph import analyze

    shapes = analyze(spec).shapes
    where = f"spec {spec.name!r}"
    if len(spec.inputs) != 1 or len(spec.outputs) != 1:
        raise DataError(
            f"{where} has {len(spec.inputs)} inputs and {len(spec.outputs)} outputs; task {task.name!r} "
            "feeds one input and one output"
        )
    (name,), (out,) = tuple(spec.inputs), tuple(spec.outputs)
    want = tuple(shapes[name])
    if task.input_shape != want:
        if math.prod(task.input_shape) != math.prod(want):
            raise DataError(
                f"{where}: input {name!r} has shape {list(want)} but task {task.name!r} gives samples of "
                f"shape {list(task.input_shape)}"
            )
        splits = {
            k: Split(getattr(task, k).x.reshape(-1, *want), getattr(task, k).y)
            for k in ("train", "val", "test")
        }
        task = replace(task, input_shape=want, **splits)
    width = math.prod(shapes[out])
    if width != task.output_dim:
        what = "classes" if task.kind == "classification" else "regression targets"
        raise DataError(
            f"{where}: output {out!r} has width {width} but task {task.name!r} has {task.output_dim} {what}"
        )
    return task


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Sizes of (train, val, test); a split with a positive fraction gets at least one sample."""
    if len(fractions) != 3 or any(not f >= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    if fractions[0] <= 0:
        raise ValueError(f"the train fraction must be positive, got {fractions}")
    n_val, n_test = (max(1, round(f * n)) if f > 0 else 0 for f in fractions[1:])
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{n} samples are too few to split with fractions {tuple(fractions)}")
    return n_train, n_val, n_test


def _build_task(
    name: str, data: TaskData, rng: np.random.Generator, fractions: tuple[float, float, float]
) -> Task:
    x = np.ascontiguousarray(data.x, dtype=np.float32)
    if data.kind == "classification":
        y: np.ndarray = np.ascontiguousarray(data.y, dtype=np.int64).reshape(-1)
        output_dim = data.output_dim if data.output_dim is not None else int(y.max()) + 1
        loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    else:
        y = np.ascontiguousarray(data.y, dtype=np.float32)
        y = y.reshape(len(y), -1)
        output_dim = y.shape[1]
        loss = "mse"
    if x.ndim == 1:
        x = x[:, None]
    n_train, n_val, _ = _split_sizes(len(x), fractions)
    order = rng.permutation(len(x))
    parts = np.split(order, [n_train, n_train + n_val])
    train, val, test = (Split(torch.from_numpy(x[p]), torch.from_numpy(y[p])) for p in parts)
    return Task(
        name=name,
        kind=data.kind,
        loss=loss,
        input_shape=tuple(x.shape[1:]),
        output_dim=output_dim,
        train=train,
        val=val,
        test=test,
        description=data.description,
        extras=dict(data.extras),
    )


# --------------------------------------------------------------------------------------------------
# Built-in tasks
# --------------------------------------------------------------------------------------------------
# Inputs are cast to float32 before the targets are computed (in float64), so every target is an
# exact function of the stored x.


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


# --------------------------------------------------------------------------------------------------
# User data
# --------------------------------------------------------------------------------------------------


def load_data(
    path: str | Path,
    *,
    seed: int = 0,
    kind: Kind | None = None,
    target: str | int | None = None,
    header: bool | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Task:
    """Read a ``.npz`` or ``.csv`` file into a task with seeded train/val/test splits.

    ``.npz``: arrays ``x`` ``[n, ...]`` and ``y`` ``[n]`` or ``[n, d]`` (``target`` names another
    array for y). ``.csv``: one sample per row, numbers only; ``target`` is the target column's
    index or header name (default: the last column), the other columns are the features. A first
    row with any non-numeric field is a header (``header`` forces it either way); blank lines and
    lines starting with ``#`` are skipped; the delimiter is ``,``, ``;`` or tab, whichever the first
    row has most of.

    ``kind`` (default: inferred): integer targets (csv: written without a decimal point) with at most
    :data:`MAX_INFERRED_CLASSES` distinct values, and at most half as many as samples, are
    classification; anything else is regression. Class labels are mapped to indices
    ``0 .. classes - 1`` in sorted order; ``task.extras["classes"]`` holds the original values.

    Problems with the file raise :class:`DataError` naming the file (and the csv line).
    """
    path = Path(path)
    if kind not in (None, "classification", "regression"):
        raise ValueError(f"kind must be 'classification', 'regression' or None, got {kind!r}")
    _check_seed(seed)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise DataError(f"{path}: unknown extension {path.suffix or '(none)'!r}; expected .npz or .csv")
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    extras: dict[str, Any] = {}
    if suffix == ".npz":
        if target is not None and not isinstance(target, str):
            raise ValueError(f"for .npz files target names the array of targets, got {target!r}")
        x, y, integer = _read_npz(path, target or "y")
    else:
        if header is not None and not isinstance(header, bool):
            raise ValueError(f"header must be True, False or None, got {header!r}")
        x, y, integer, columns, target_name = _read_csv(path, target, header)
        if columns is not None:
            extras["columns"] = columns
            extras["target"] = target_name
    data = _user_task_data(path, x, y, integer, kind, extras)
    _, split_seq = np.random.SeedSequence(seed).spawn(2)
    try:
        return _build_task(path.name, data, np.random.default_rng(split_seq), fractions)
    except ValueError as error:
        raise DataError(f"{path}: {error}") from None


def _first_bad_row(a: np.ndarray) -> int | None:
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def _read_npz(path: Path, y_name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: cannot be read as an .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array, expected an .npz archive with arrays x and {y_name}")
    with archive:
        names = list(archive.files)
        arrays = {}
        for name in ("x", y_name):
            if name not in names:
                raise DataError(
                    f"{path}: missing array {name!r} (arrays found: {', '.join(names) or 'none'})"
                )
            try:
                arrays[name] = archive[name]
            except (ValueError, OSError) as error:
                raise DataError(f"{path}: cannot read array {name!r} ({error})") from None
    x, y = arrays["x"], arrays[y_name]
    for name, a in (("x", x), (y_name, y)):
        if a.dtype.kind not in "biuf":
            raise DataError(f"{path}: array {name!r} has dtype {a.dtype}; expected numbers")
        if a.ndim == 0:
            raise DataError(f"{path}: array {name!r} is a scalar; expected one row per sample")
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples but {y_name!r} has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{path}: no samples")
    for name, a in (("x", x), (y_name, y)):
        row = _first_bad_row(a.astype(np.float64))
        if row is not None:
            raise DataError(f"{path}: array {name!r} has NaN or infinite values (first at sample {row})")
    return x, y, y.dtype.kind in "biu"


def _sniff_delimiter(line: str) -> str:
    return max((",", ";", "\t"), key=line.count)


def _read_csv(
    path: Path, target: str | int | None, header: bool | None
) -> tuple[np.ndarray, np.ndarray, bool, tuple[str, ...] | None, str | None]:
    """Parse a numeric csv; returns x, y, whether y was written as integers, column names, y's name."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), None)
    if first is None:
        raise DataError(f"{path}: no data rows")
    reader = csv.reader(lines, delimiter=_sniff_delimiter(first))
    rows: list[tuple[int, list[str]]] = []
    for fields in reader:
        fields = [f.strip() for f in fields]
        if not any(fields) or fields[0].startswith("#"):
            continue
        rows.append((reader.line_num, fields))

    width = len(rows[0][1])
    if width < 2:
        raise DataError(
            f"{path}:{rows[0][0]}: found 1 column; need features and a target "
            "(delimiters tried: ',', ';', tab)"
        )
    if header is None:
        header = not all(_is_number(f) for f in rows[0][1])
    columns = tuple(rows[0][1]) if header else None
    data_rows = rows[1:] if header else rows
    if not data_rows:
        raise DataError(f"{path}: no data rows")

    if target is None:
        t = width - 1
    elif isinstance(target, str):
        if columns is None:
            raise DataError(f"{path}: target {target!r} is a column name but the file has no header row")
        if target not in columns:
            raise _unknown_column(path, target, columns)
        t = columns.index(target)
    elif isinstance(target, int) and not isinstance(target, bool) and -width <= target < width:
        t = target % width
    else:
        raise DataError(f"{path}: target column {target!r} out of range; the file has {width} columns")

    values = np.empty((len(data_rows), width), dtype=np.float64)
    integer = True
    for i, (line, fields) in enumerate(data_rows):
        if len(fields) != width:
            raise DataError(f"{path}:{line}: expected {width} fields, found {len(fields)}")
        for j, text_value in enumerate(fields):
            where = f"column {j + 1}" + (f" ({columns[j]!r})" if columns else "")
            if not text_value:
                raise DataError(f"{path}:{line}: empty value in {where}")
            try:
                value = float(text_value)
            except ValueError:
                raise DataError(f"{path}:{line}: {text_value!r} in {where} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"{path}:{line}: non-finite value {text_value!r} in {where}")
            values[i, j] = value
        integer = integer and _is_integer_literal(fields[t])
    x = np.delete(values, t, axis=1)
    y = values[:, t]
    return x, y, integer, columns, (columns[t] if columns else None)


def _unknown_column(path: Path, name: str, columns: tuple[str, ...]) -> DataError:
    return DataError(
        f"{path}: no column {name!r}{_did_you_mean(name, columns)}; columns: {', '.join(columns)}"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_integer_literal(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _user_task_data(
    path: Path, x: np.ndarray, y: np.ndarray, integer: bool, kind: Kind | None, extras: dict[str, Any]
) -> TaskData:
    n = len(y)
    if y.ndim > 2:
        raise DataError(f"{path}: targets have shape {list(y.shape)}; expected [n] or [n, d]")
    single = y.ndim == 1 or y.shape[1] == 1
    if kind is None:
        distinct = len(np.unique(y)) if single and integer else None
        few = distinct is not None and distinct <= min(MAX_INFERRED_CLASSES, max(2, n // 2))
        kind = "classification" if few else "regression"
    if kind == "regression":
        return TaskData(
            x, y.astype(np.float64), "regression", f"regression data from {path}; {n} samples", extras=extras
        )
    if not single:
        raise DataError(
            f"{path}: classification targets must be one label per sample, got shape {list(y.shape)}"
        )
    y = y.reshape(-1)
    fractional = y != np.round(y)
    if fractional.any():
        row = int(np.argmax(fractional))
        raise DataError(f"{path}: classification targets must be integers; sample {row} is {y[row]}")
    classes, indices = np.unique(y.astype(np.int64), return_inverse=True)
    extras["classes"] = torch.from_numpy(classes)
    return TaskData(
        x,
        indices,
        "classification",
        f"classification data from {path}; {n} samples, {len(classes)} classes",
        output_dim=len(classes),
        extras=extras,
    )
