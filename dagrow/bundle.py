"""Bundles: one safetensors file holding the weights and, in its metadata, the canonical spec.

``save(model, path)`` writes atomically (a temporary file in the same folder, then a rename) and can
also write a human-readable ``spec.yaml`` beside it. ``load(path)`` parses the spec from the metadata,
compiles it and loads the weights after checking every name and shape. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .compile import DagModel, compile, load_weights, spec_of, weights_dtype, weights_problems
from .spec import Diagnostic, GraphSpec, SourceMap, SpecError, load_spec, parse_spec

FORMAT = "dagrow-bundle/1"
SPEC_KEY = "dagrow.spec"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save(model: nn.Module, path: str | Path, *, spec_yaml: bool | str | Path = False) -> Path:
    """Write ``model`` (compiled by dagrow) to a bundle; with ``spec_yaml`` also a spec.yaml beside it
    (``True`` for ``<folder>/spec.yaml``, or a path)."""
    spec = spec_of(model)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, SPEC_KEY: spec.to_json()}
    out = atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    if spec_yaml:
        yaml_path = Path(path).with_name("spec.yaml") if spec_yaml is True else Path(spec_yaml)
        atomic_write_text(yaml_path, spec.to_yaml())
    return out


def _error(path: Path, message: str) -> SpecError:
    return SpecError([Diagnostic(str(path), 1, 1, message)])


def read_bundle(path: str | Path) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """The spec and the weights of a bundle, checked; raise :class:`SpecError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise _error(path, "no such bundle file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _error(path, f"not a safetensors file ({exc})") from None
    if SPEC_KEY not in metadata:
        raise _error(path, f"this safetensors file has no {SPEC_KEY!r} metadata: it is not a dagrow bundle")
    try:
        data = json.loads(metadata[SPEC_KEY])
    except json.JSONDecodeError as exc:
        raise _error(path, f"the spec in the metadata is not valid JSON ({exc})") from None
    spec = parse_spec(data, SourceMap(f"{path}[{SPEC_KEY}]", {}, data))
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
