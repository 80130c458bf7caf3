"""Tasks as seeded train/validation/test splits, and the registry of built-in tasks.

A :class:`Task` holds three :class:`Split` s of tensors and what a training loop needs to know about
them: the kind (classification or regression), the loss, the input shape, the output width and the
metric. A task builder returns :class:`TaskData` (all samples, as numpy arrays);
:func:`build_task` converts and splits it. Built-in builders are registered in :data:`TASKS` with
:func:`register_task` (dagrow/tasks/builtin.py registers the built-in ones) and made with
:func:`make_task`; :func:`fit_task` checks a task against a spec before training.

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

import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..registry import Registry, did_you_mean

if TYPE_CHECKING:
    from ..spec import GraphSpec

Kind = Literal["classification", "regression"]
SplitName = Literal["train", "val", "test"]

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
"""Default (train, val, test) fractions of the samples."""

__all__ = [
    "DEFAULT_FRACTIONS",
    "TASKS",
    "Builder",
    "DataError",
    "Kind",
    "Split",
    "SplitName",
    "Task",
    "TaskData",
    "TaskInfo",
    "build_task",
    "check_seed",
    "fit_task",
    "list_tasks",
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


TASKS: Registry[TaskInfo] = Registry("task")
"""The registered tasks (name -> :class:`TaskInfo`), in registration order."""


def register_task(name: str, *, summary: str | None = None) -> Callable[[Builder], Builder]:
    """Function decorator: register ``builder(rng, n=default, *, option=default, ...) -> TaskData``.

    ``rng`` is a ``np.random.Generator``; ``n`` the total number of samples (train + val + test);
    the keyword-only parameters are the task's options. ``summary`` defaults to the first line of the
    builder's docstring.
    """

    def deco(builder: Builder) -> Builder:
        params = inspect.signature(builder).parameters
        n_param = params.get("n")
        if n_param is None:
            raise TypeError(f"task builder {builder.__name__} must take the number of samples n")
        options = {p.name: p.default for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        doc = summary or (inspect.getdoc(builder) or name).strip().splitlines()[0]
        default_n = None if n_param.default is inspect.Parameter.empty else n_param.default
        TASKS.add(name, TaskInfo(name, builder, doc, default_n, options), doc)
        return builder

    return deco


def list_tasks() -> list[str]:
    """Names of the registered tasks, in registration order."""
    return TASKS.names()


def task_info(name: str) -> TaskInfo:
    """The registry entry of a task (:class:`~dagrow.registry.UnknownName`, a ``ValueError`` with a
    "did you mean" hint and the available tasks, if unknown)."""
    return TASKS.get(name)


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
                f"task {name!r} has no option {key!r}{did_you_mean(key, known)}; "
                f"its options: {', '.join(known) or 'none'}"
            )
    check_seed(seed)
    data_seq, split_seq = np.random.SeedSequence(seed).spawn(2)
    kwargs = dict(options)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        kwargs["n"] = n
    data = info.builder(np.random.default_rng(data_seq), **kwargs)
    return build_task(info.name, data, np.random.default_rng(split_seq), fractions)


def fit_task(task: Task, spec: GraphSpec) -> Task:
    """``task`` checked against a spec (a ``GraphSpec``) before any training: one input, one output,
    the output width equal to the classes (classification) or the targets (regression). Flat features
    are reshaped to the spec's input shape when the sizes agree (digits' 64 pixels to ``[1, 8, 8]``);
    any other mismatch raises :class:`DataError` naming the spec, the input or output and both shapes.
    """
    from ..graph import analyze

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
        train, val, test = (Split(s.x.reshape(-1, *want), s.y) for s in (task.train, task.val, task.test))
        task = replace(task, input_shape=want, train=train, val=val, test=test)
    width = math.prod(shapes[out])
    if width != task.output_dim:
        what = "classes" if task.kind == "classification" else "regression targets"
        raise DataError(
            f"{where}: output {out!r} has width {width} but task {task.name!r} has {task.output_dim} {what}"
        )
    return task


def check_seed(seed: int) -> None:
    """``ValueError`` unless ``seed`` is a non-negative integer."""
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


def build_task(
    name: str, data: TaskData, rng: np.random.Generator, fractions: tuple[float, float, float]
) -> Task:
    """``data`` as a :class:`Task`: x float32, y int64 ``[n]`` (classification) or float32 ``[n, d]``
    (regression), 1-D x as ``[n, 1]``, the samples shuffled by ``rng`` into (train, val, test) of
    ``fractions`` of them (``ValueError`` when the fractions are invalid or too few samples)."""
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
