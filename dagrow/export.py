"""Exports of an architecture and of a compiled model.

Views: Graphviz DOT text and a PNG drawn with matplotlib, both from the layered layout of
:mod:`dagrow.drawing` (neither needs a Graphviz binary; matplotlib is the optional extra ``dagrow[plot]``).

Programs: a ``torch.export`` ExportedProgram saved as ``.pt2`` (:func:`write_pt2`) and an ONNX model
(:func:`write_onnx`, the optional extra ``dagrow[onnx]``: onnx + onnxscript). Both are traced from
example inputs built from the spec's input shapes, in the model's dtype, with the batch dimension
dynamic; the program's arguments are the spec's inputs in order and its outputs the spec's outputs
(a tuple when there are several). Every file is written atomically.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .bundle import atomic_write
from .compile import spec_of
from .drawing import op_label, to_dot, write_png
from .spec import GraphSpec

__all__ = [
    "ONNX_EXTRA",
    "ExportError",
    "example_inputs",
    "export_program",
    "model_dtype",
    "op_label",
    "to_dot",
    "write_onnx",
    "write_png",
    "write_pt2",
]


# --------------------------------------------------------------------------------------------------
# Programs: torch.export (.pt2) and ONNX
# --------------------------------------------------------------------------------------------------


class ExportError(ValueError):
    """A model that torch.export or the ONNX exporter could not trace (the message names the spec)."""


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 for a model without parameters)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def example_inputs(
    spec: GraphSpec, *, batch: int = 2, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Standard normal tensors ``[batch, *shape]``, one per spec input, in the spec's input order
    (the order of the compiled model's arguments)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, *inp.shape) for inp in spec.inputs.values()]
    return tuple(torch.randn(shape, generator=gen, dtype=dtype).to(device) for shape in shapes)


def _trace_inputs(model: nn.Module) -> tuple[GraphSpec, tuple[torch.Tensor, ...], tuple[dict, ...]]:
    """The spec, example inputs (batch 2: torch.export specialises sizes 0 and 1) and a dynamic batch
    dimension shared by every input."""
    spec = spec_of(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    args = example_inputs(spec, dtype=model_dtype(model), device=device)
    batch = torch.export.Dim("batch")
    return spec, args, tuple({0: batch} for _ in args)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Exports are inference programs: batch norms use their running statistics (and do not update
    them); the model's own mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def export_program(model: nn.Module) -> torch.export.ExportedProgram:
    """``torch.export.export`` of a dagrow model in eval mode with a dynamic batch dimension."""
    spec, args, dynamic = _trace_inputs(model)
    try:
        with _eval_mode(model):
            return torch.export.export(model, args, dynamic_shapes=dynamic)
    except Exception as exc:  # torch raises many types; the CLI must give one line, not a traceback
        raise ExportError(f"{spec.name}: torch.export failed: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_pt2(model: nn.Module, path: str | Path) -> Path:
    """Export ``model`` with :func:`export_program` and save it with ``torch.export.save`` (atomically).
    Load it back with ``torch.export.load(path).module()``."""
    program = export_program(model)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.export.save(program, f)

    return atomic_write(path, write)


ONNX_EXTRA = "exporting to ONNX needs onnx and onnxscript: pip install 'dagrow[onnx]'"


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(ONNX_EXTRA) from exc


def write_onnx(model: nn.Module, path: str | Path, *, opset: int | None = None) -> Path:
    """Export ``model`` in eval mode to an ONNX file with ``torch.onnx.export(dynamo=True)`` (atomically).

    Graph inputs and outputs are named after the spec's inputs and outputs; the batch dimension is
    dynamic. Needs the optional extra ``dagrow[onnx]``.
    """
    _require_onnx()
    spec, args, dynamic = _trace_inputs(model)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and similar notes
    try:
        with warnings.catch_warnings(), _eval_mode(model):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                args,
                dynamo=True,
                dynamic_shapes=dynamic,
                input_names=list(spec.inputs),
                output_names=list(spec.outputs),
                opset_version=opset,
                verbose=False,
            )
    except Exception as exc:  # see export_program
        raise ExportError(f"{spec.name}: ONNX export failed: {_first_line(exc)}") from exc
    finally:
        quiet.setLevel(level)
    if program is None:
        raise ExportError(f"{spec.name}: ONNX export returned no program")
    return atomic_write(path, lambda tmp: program.save(str(tmp)))
