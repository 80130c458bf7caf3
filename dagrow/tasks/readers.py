"""User data: ``.npz`` and ``.csv`` files read into a :class:`~dagrow.tasks.core.Task`.

:func:`load_data` reads the file, infers classification or regression (:data:`MAX_INFERRED_CLASSES`),
maps class labels to indices and splits the samples with the same seeded stream as the built-in tasks
(the second of ``np.random.SeedSequence(seed).spawn(2)``). Every problem with a file is a
:class:`~dagrow.tasks.core.DataError` naming the file (and the csv line or the sample).

Limits, checked before anything large is allocated: a csv field has at most :data:`MAX_FIELD_CHARS`
characters; an ``.npz`` array's header (shape and dtype) must describe exactly the bytes its zip
member holds, and the member's uncompressed size must be reachable from its compressed size
(:data:`MAX_COMPRESSION_RATIO`). Every value must be finite in float32 (the dtype of the tensors);
class labels must be integers of magnitude at most 2**53 (exact in float64).
"""

from __future__ import annotations

import csv
import math
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..registry import did_you_mean
from .core import DEFAULT_FRACTIONS, DataError, Kind, Task, TaskData, build_task, check_seed

__all__ = ["MAX_COMPRESSION_RATIO", "MAX_FIELD_CHARS", "MAX_INFERRED_CLASSES", "MAX_LABEL", "load_data"]

MAX_INFERRED_CLASSES = 100
"""Integer targets with more distinct values than this are treated as regression unless told otherwise."""

MAX_FIELD_CHARS = 1000
"""Longest csv field (a number or a column name) read."""

MAX_COMPRESSION_RATIO = 1100
"""An ``.npz`` member may claim at most this many bytes per compressed byte (deflate reaches 1032)."""

MAX_LABEL = 2**53
"""Largest class label magnitude: every integer up to it is exact in float64."""

FLOAT32_MAX = float(np.finfo(np.float32).max)


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
        line_numbers: list[int] | None = None
    else:
        if header is not None and not isinstance(header, bool):
            raise ValueError(f"header must be True, False or None, got {header!r}")
        x, y, integer, columns, target_name, line_numbers = _read_csv(path, target, header)
        if columns is not None:
            extras["columns"] = columns
            extras["target"] = target_name

    def where(row: int) -> str:
        return f"{path}:{line_numbers[row]}" if line_numbers else f"{path}: sample {row}"

    data = _user_task_data(path, x, y, integer, kind, extras, where)
    _, split_seq = np.random.SeedSequence(seed).spawn(2)
    try:
        return build_task(path.name, data, np.random.default_rng(split_seq), fractions)
    except ValueError as error:
        raise DataError(f"{path}: {error}") from None


def _first_bad_row(a: np.ndarray) -> int | None:
    """The first sample with a value that is not finite in float32 (NaN, inf, or beyond +-3.4e38)."""
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(a.reshape(len(a), -1).astype(np.float64)) <= FLOAT32_MAX).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def _npy_header(path: Path, archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the array ``name`` from its ``.npy`` header, checked against the bytes its zip
    member holds before anything is allocated."""
    info = archive.getinfo(name + ".npy")
    if info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + 2**16:
        raise DataError(
            f"{path}: array {name!r} claims {info.file_size:,} bytes from {info.compress_size:,} "
            "compressed bytes, more than compression can give"
        )
    with archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile) as error:
            raise DataError(f"{path}: array {name!r} has no valid .npy header ({error})") from None
        offset = f.tell()
    if dtype.kind not in "biuf" or dtype.hasobject:
        raise DataError(f"{path}: array {name!r} has dtype {dtype}; expected numbers")
    if len(shape) == 0:
        raise DataError(f"{path}: array {name!r} is a scalar; expected one row per sample")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != info.file_size - offset:
        raise DataError(
            f"{path}: array {name!r}: its header claims shape {list(shape)} of {dtype} ({nbytes:,} bytes) "
            f"but the archive holds {info.file_size - offset:,} bytes of data"
        )
    return shape, dtype


def _read_npz(path: Path, y_name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            single = f.read(6) == b"\x93NUMPY"
        raise DataError(
            f"{path}: holds a single array, expected an .npz archive with arrays x and {y_name}"
            if single
            else f"{path}: cannot be read as an .npz archive (not a zip file)"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            members = [n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")]
            for name in ("x", y_name):
                if name not in members:
                    shown = ", ".join(repr(m) for m in members) or "none"
                    raise DataError(f"{path}: missing array {name!r} (arrays found: {shown})")
                _npy_header(path, zf, name)
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path}: cannot be read as an .npz archive ({error})") from None
    with archive:
        arrays = {}
        for name in ("x", y_name):
            try:
                arrays[name] = archive[name]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
                raise DataError(f"{path}: cannot read array {name!r} ({error})") from None
    x, y = arrays["x"], arrays[y_name]
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples but {y_name!r} has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{path}: no samples")
    for name, a in (("x", x), (y_name, y)):
        row = _first_bad_row(a)
        if row is not None:
            raise DataError(
                f"{path}: sample {row}: array {name!r} has NaN or infinite values, or values beyond "
                f"float32's range (+-{FLOAT32_MAX:.3g})"
            )
    return x, y, y.dtype.kind in "biu"


def _sniff_delimiter(line: str) -> str:
    return max((",", ";", "\t"), key=line.count)


def _read_csv(
    path: Path, target: str | int | None, header: bool | None
) -> tuple[np.ndarray, np.ndarray, bool, tuple[str, ...] | None, str | None, list[int]]:
    """Parse a numeric csv; returns x, y, whether y was written as integers, column names, y's name and
    the line number of each sample."""
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
    try:
        for fields in reader:
            fields = [f.strip() for f in fields]
            long = next((j for j, f in enumerate(fields) if len(f) > MAX_FIELD_CHARS), None)
            if long is not None:
                raise DataError(
                    f"{path}:{reader.line_num}: column {long + 1} has {len(fields[long]):,} characters "
                    f"(at most {MAX_FIELD_CHARS:,})"
                )
            if not any(fields) or fields[0].startswith("#"):
                continue
            rows.append((reader.line_num, fields))
    except csv.Error as error:
        if "field larger than field limit" in str(error):
            error = csv.Error(f"a field has more than {MAX_FIELD_CHARS:,} characters")
        raise DataError(f"{path}:{reader.line_num}: {error}") from None
    if not rows:
        raise DataError(f"{path}: no data rows (only empty fields, blank lines or comments)")

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
            if not abs(value) <= FLOAT32_MAX:
                reason = "non-finite value" if not math.isfinite(value) else "value beyond float32's range"
                raise DataError(f"{path}:{line}: {reason} {text_value!r} in {where}")
            values[i, j] = value
        integer = integer and _is_integer_literal(fields[t])
    x = np.delete(values, t, axis=1)
    y = values[:, t]
    return x, y, integer, columns, (columns[t] if columns else None), [line for line, _ in data_rows]


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
    path: Path,
    x: np.ndarray,
    y: np.ndarray,
    integer: bool,
    kind: Kind | None,
    extras: dict[str, Any],
    where: Callable[[int], str],
) -> TaskData:
    """The samples as a task; ``where(row)`` names a sample in messages (file and line, or sample)."""
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
        raise DataError(f"{where(row)}: classification targets must be integers, found {y[row]}")
    huge = np.abs(y.astype(np.float64)) > MAX_LABEL
    if huge.any():
        row = int(np.argmax(huge))
        raise DataError(
            f"{where(row)}: class label {y[row]} is too large (labels are integers of magnitude at most "
            f"2**53 = {MAX_LABEL:,})"
        )
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
