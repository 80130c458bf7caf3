"""Bundles: one safetensors file holding the weights and, in its metadata, the canonical spec.

``save(model, path)`` writes atomically (a temporary file in the same folder, then a rename) and can
also write a human-readable ``spec.yaml`` beside it. ``load(path)`` parses the spec from the metadata,
compiles it and loads the weights after checking every name and shape. No pickle anywhere.

Reading checks before allocating anything: the safetensors header is read by hand (its size, at most
:data:`MAX_HEADER_BYTES`; JSON nested at most :data:`MAX_JSON_DEPTH` deep; no duplicate key), the spec
in its metadata is validated, and every tensor's name, dtype (a float: F16, BF16, F32 or F64; I64 for a
batch norm's ``num_batches_tracked``), shape and byte range is compared with what the spec needs
(computed on the meta device). Only then are the tensors read; a tensor with a NaN or infinite value
is refused. ``save`` refuses such weights too: no bundle with non-finite weights is ever written.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .compile import (
    DagModel,
    compile,
    expected_tensors,
    load_weights,
    spec_of,
    weights_dtype,
    weights_problems,
)
from .spec import MAX_SPEC_BYTES, Diagnostic, GraphSpec, SourceMap, SpecError, load_spec, parse_spec

FORMAT = "dagrow-bundle/1"
SPEC_KEY = "dagrow.spec"
MAX_HEADER_BYTES = MAX_SPEC_BYTES + 4 * 2**20  # the spec plus one header entry per tensor
MAX_JSON_DEPTH = 64  # a spec needs 5 levels
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # safetensors dtype -> bytes per value
COUNT_DTYPES = {"I64": 8}  # integer buffers: a batch norm's num_batches_tracked


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class OutputError(ValueError):
    """An output path that cannot be written (checked before any work; the message names it)."""


def check_output_file(path: str | Path, flag: str = "-o") -> Path:
    """Refuse, before any work, an output file that :func:`atomic_write` could not write: a path that
    is a folder, or whose nearest existing parent is a file or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: {flag} names a folder; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot be written: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot be written: no permission to write in {parent}")
    return path


def check_output_folder(path: str | Path, files: list[str], flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file, or in which one of ``files``
    (relative paths) is a folder or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: {flag} names an existing file, not a folder")
    for name in files:
        target = path / name
        if target.is_dir():
            raise OutputError(f"{target}: is a folder; the command writes a file there")
        check_output_file(target, flag)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class NonFiniteWeights(ValueError):
    """Weights with NaN or infinite values: dagrow never writes them (the message names the tensors)."""


def nonfinite_problems(tensors: dict[str, torch.Tensor]) -> list[str]:
    """One line per floating tensor holding NaN or infinite values, naming it and counting them."""
    problems = []
    for name, t in tensors.items():
        if not (t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(t).all()):
            continue
        nan = int(torch.isnan(t).sum())
        problems.append(
            f"tensor {name!r} has {nan:,} NaN and {int((~torch.isfinite(t)).sum()) - nan:,} infinite "
            f"values (of {t.numel():,})"
        )
    return problems


def check_finite(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise :class:`NonFiniteWeights` naming ``path`` and every tensor with a NaN or infinite value."""
    problems = nonfinite_problems(tensors)
    if problems:
        raise NonFiniteWeights(
            f"{path}: not written: the model has non-finite weights: {'; '.join(problems)}"
        )


def save(model: nn.Module, path: str | Path, *, spec_yaml: bool | str | Path = False) -> Path:
    """Write ``model`` (compiled by dagrow) to a bundle; with ``spec_yaml`` also a spec.yaml beside it
    (``True`` for ``<folder>/spec.yaml``, or a path). A model with NaN or infinite weights is refused
    (:class:`NonFiniteWeights`) and nothing is written."""
    spec = spec_of(model)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    check_finite(tensors, path)
    metadata = {"format": FORMAT, SPEC_KEY: spec.to_json()}
    out = atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    if spec_yaml:
        yaml_path = Path(path).with_name("spec.yaml") if spec_yaml is True else Path(spec_yaml)
        atomic_write_text(yaml_path, spec.to_yaml())
    return out


def _error(path: Path, message: str) -> SpecError:
    return SpecError([Diagnostic(str(path), 1, 1, message)])


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(f"duplicate key {k!r}")
        out[k] = v
    return out


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses duplicate keys and nesting deeper than :data:`MAX_JSON_DEPTH` (checked
    before parsing: Python's parser recurses); ValueError says why."""
    brackets = _BRACKETS.findall(_JSON_STRING.sub("", text))
    depth = max(accumulate(1 if b in "[{" else -1 for b in brackets), default=0)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested {depth} levels deep (more than {MAX_JSON_DEPTH})")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise ValueError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The tensor entries, the metadata and the size of the data section of a safetensors file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _error(path, "not a safetensors file (shorter than the 8 bytes of its header size)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise _error(
                path,
                f"not a safetensors file: its header claims {n:,} bytes "
                f"(the file has {size:,}; dagrow reads headers of at most {MAX_HEADER_BYTES:,})",
            )
        raw = f.read(n)
    try:
        header = strict_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _error(path, f"not a safetensors file: its header is {exc}") from None
    if not isinstance(header, dict):
        raise _error(path, "not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _error(path, "not a safetensors file: __metadata__ is not a mapping of strings")
    return header, metadata, size - 8 - n


def _tensor_problems(header: dict[str, Any], expected: dict[str, torch.Tensor], data_size: int) -> list[str]:
    """Every tensor of the header that does not fit the spec: name, dtype, shape, byte range."""
    problems = []
    for name, t in expected.items():
        if name not in header:
            problems.append(f"missing tensor {name!r} (shape {list(t.shape)})")
    for name, entry in header.items():
        if name not in expected:
            shape = entry.get("shape") if isinstance(entry, dict) else None
            problems.append(
                f"unexpected tensor {name!r} (shape {shape}): the spec has no such parameter"
                if isinstance(shape, list)
                else f"unexpected tensor {name!r}: the spec has no such parameter"
            )
            continue
        need = list(expected[name].shape)
        if not isinstance(entry, dict):
            problems.append(f"tensor {name!r}: its header entry is not a JSON object")
            continue
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        allowed = FLOAT_DTYPES if expected[name].is_floating_point() else COUNT_DTYPES
        if dtype not in allowed:
            what = "weights are floats" if allowed is FLOAT_DTYPES else "a count of batches is an integer"
            problems.append(f"tensor {name!r} has dtype {dtype!r}: {what} ({', '.join(allowed)})")
            continue
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            problems.append(f"tensor {name!r} has no valid shape ({shape!r})")
            continue
        if shape != need:
            problems.append(f"tensor {name!r} has shape {shape} but the spec needs {need}")
            continue
        nbytes = math.prod(shape) * allowed[dtype]
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
            and offsets[1] - offsets[0] == nbytes
        ):
            problems.append(
                f"tensor {name!r}: data_offsets {offsets!r} do not hold its {nbytes:,} bytes "
                f"within the file's {data_size:,} bytes of data"
            )
    return problems


def read_bundle(path: str | Path) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """The spec and the weights of a bundle, checked; raise :class:`SpecError` naming the file.

    Every tensor's name, dtype, shape and byte range is checked against the spec before any is read."""
    path = Path(path)
    if not path.is_file():
        raise _error(path, "no such bundle file")
    header, metadata, data_size = _read_header(path)
    if SPEC_KEY not in metadata:
        raise _error(path, f"this safetensors file has no {SPEC_KEY!r} metadata: it is not a dagrow bundle")
    text = metadata[SPEC_KEY]
    if len(text) > MAX_SPEC_BYTES:
        message = f"the spec in the metadata has {len(text):,} characters (more than {MAX_SPEC_BYTES:,})"
        raise _error(path, message)
    try:
        data = strict_json(text)
    except ValueError as exc:
        raise _error(path, f"the spec in the metadata is {exc}") from None
    spec = parse_spec(data, SourceMap(f"{path}[{SPEC_KEY}]", {}, data))
    problems = _tensor_problems(header, expected_tensors(spec), data_size)
    if problems:
        raise SpecError([Diagnostic(str(path), 1, 1, p) for p in problems])
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _error(path, f"not a safetensors file ({exc})") from None
    problems = nonfinite_problems(tensors)
    if problems:
        raise SpecError([Diagnostic(str(path), 1, 1, f"non-finite weights: {p}") for p in problems])
    return spec, tensors


def load(
    path: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> DagModel:
    """Load a bundle into a compiled model; every tensor name and shape is checked first."""
    spec, tensors = read_bundle(path)
    model = compile(spec, dtype=dtype or weights_dtype(tensors), device=device)
    problems = weights_problems(model, tensors)
    if problems:
        raise SpecError([Diagnostic(str(path), 1, 1, p) for p in problems])
    load_weights(model, tensors)
    return model


def load_model_or_spec(path: str | Path) -> tuple[GraphSpec, DagModel | None]:
    """A spec file (.yaml, .yml, .json) as ``(spec, None)``, or a bundle (.safetensors) as
    ``(spec, model)`` with its weights loaded after a check of every tensor name and shape."""
    path = Path(path)
    if path.suffix == ".safetensors":
        model = load(path)
        return spec_of(model), model
    return load_spec(path), None
