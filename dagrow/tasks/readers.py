"""User data: ``.npz`` and ``.csv`` files read into a :class:`~dagrow.tasks.core.Task`.

:func:`load_data` reads the file, infers classification or regression (:data:`MAX_INFERRED_CLASSES`),
maps class labels to indices and splits the samples with the same seeded stream as the built-in tasks
(the second of ``np.random.SeedSequence(seed).spawn(2)``). Every problem with a file is a
:class:`~dagrow.tasks.core.DataError` naming the file (and, for csv, the line).
"""

from __future__ import annotations

import csv
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..registry import did_you_mean
from .core import DEFAULT_FRACTIONS, DataError, Kind, Task, TaskData, build_task, check_seed

__all__ = ["MAX_INFERRED_CLASSES", "load_data"]

MAX_INFERRED_CLASSES = 100
"""Integer targets with more distinct values than this are treated as regression unless told otherwise."""


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
    check_seed(seed)
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
        return build_task(path.name, data, np.random.default_rng(split_seq), fractions)
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
        f"{path}: no column {name!r}{did_you_mean(name, columns)}; columns: {', '.join(columns)}"
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
