"""dagrow: grow neural networks defined as YAML DAGs while they train.

The small public API::

    spec = dagrow.load_spec("specs/mlp_sin50.yaml")   # GraphSpec (pydantic, frozen)
    model = dagrow.compile(spec)                      # torch.fx GraphModule that knows its spec
    dagrow.save(model, "out/model.safetensors")       # bundle: weights + spec in the metadata
    model = dagrow.load("out/model.safetensors")
"""

from .bundle import load, save
from .compile import DagModel, compile, load_weights, spec_of
from .graph import analyze, num_params
from .ops import list_activations, list_ops
from .spec import Diagnostic, GraphSpec, SpecError, json_schema, load_spec

__version__ = "0.1.0"

__all__ = [
    "DagModel",
    "Diagnostic",
    "GraphSpec",
    "SpecError",
    "analyze",
    "compile",
    "json_schema",
    "list_activations",
    "list_ops",
    "load",
    "load_spec",
    "load_weights",
    "num_params",
    "save",
    "spec_of",
]
