"""dagrow: grow neural networks defined as YAML DAGs while they train.

The small public API::

    spec = dagrow.load_spec("specs/mlp_sin50.yaml")   # GraphSpec (pydantic, frozen)
    model = dagrow.compile(spec)                      # torch.fx GraphModule that knows its spec
    dagrow.save(model, "out/model.safetensors")       # bundle: weights + spec in the metadata
    model = dagrow.load("out/model.safetensors")

    stats = dagrow.measure(model, [(x, y)], "mse")     # statistics of every growth site
    p = dagrow.propose(stats, dagrow.enumerate_sites(spec)[0], init="tiny", neurons=2)
    result = dagrow.grow(spec, dagrow.make_task("sin50"), dagrow.GrowthConfig(growths=5))

    grower = dagrow.Grower(spec, loss="mse", strategy="amplitude_factor")  # your own training loop
    step = grower.step(model, optimizer, growth_batches)  # measure, plan, apply; optimizer updated in place
"""

from .activations import list_activations
from .bundle import load, save
from .compile import DagModel, compile, load_weights, spec_of
from .config import GrowthConfig
from .graph import analyze, num_params
from .grower import Grower, GrowthStep
from .growth.proposals import propose
from .loop import grow, resume
from .ops import list_ops
from .plan import Plan
from .recorder import Recorder
from .sites import enumerate_sites
from .spec import Diagnostic, GraphSpec, SpecError, json_schema, load_spec
from .stats import measure
from .tasks import make_task

__version__ = "0.1.0"

__all__ = [
    "DagModel",
    "Diagnostic",
    "GraphSpec",
    "GrowthConfig",
    "GrowthStep",
    "Grower",
    "Plan",
    "Recorder",
    "SpecError",
    "analyze",
    "compile",
    "enumerate_sites",
    "grow",
    "json_schema",
    "list_activations",
    "list_ops",
    "load",
    "load_spec",
    "load_weights",
    "make_task",
    "measure",
    "num_params",
    "propose",
    "resume",
    "save",
    "spec_of",
]
