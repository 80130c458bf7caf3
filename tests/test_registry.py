"""Contract tests over every registry: every op and every activation compiles, runs forward and
backward without NaN, and every parameter receives a gradient; every task builds and fits a matching
spec; every init proposes neurons at a widen site; every loss gives a finite scalar; and the one "did
you mean" helper. A newly registered entry is tested here without writing a test for it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dagrow import compile, json_schema, list_activations, list_ops, load_spec
from dagrow.activations import activation_info, directional_derivative, one_sided_slopes
from dagrow.cli import app
from dagrow.growth.inits import FUNCTION_PRESERVING, INITS
from dagrow.growth.proposals import propose
from dagrow.losses import LOSSES, loss_function
from dagrow.ops import ShapeError, op_info
from dagrow.planner import STRATEGIES
from dagrow.registry import UnknownName, did_you_mean, unknown_name_message
from dagrow.sites import find_site
from dagrow.spec import parse_spec
from dagrow.stats import measure
from dagrow.tasks import TASKS, fit_task, make_task, task_info
from dagrow.vocabularies import vocabulary, vocabulary_names

ROOT = Path(__file__).resolve().parents[1]

# sources the op under test may read (a node fed by a parametric edge, so its gradient is checked
# through the op) and target sizes it may write
SOURCES = {
    (6,): ("x", {"shape": [5]}, None),
    (2, 6, 6): ("img", {"shape": [1, 6, 6]}, {"type": "conv2d", "padding": 1}),
}
TARGETS = [{"width": 6}, {"channels": 2}, {"width": 72}, {"channels": 3}]


def op_spec(name: str) -> dict:
    """A small spec whose edge ``s -> t`` carries op ``name`` with its default settings."""
    op = op_info(name).model()
    for shape, (inp, inp_spec, first_op) in SOURCES.items():
        source_node = {"width": shape[0]} if len(shape) == 1 else {"channels": shape[0]}
        for target in TARGETS:
            try:
                out = op.out_shape(shape, (target.get("width"), target.get("channels")))  # type: ignore[attr-defined]
            except ShapeError:
                continue
            nodes = {"s": {**source_node, "activation": "tanh"}, "t": {**target, "activation": "tanh"}}
            edges = [
                {"from": inp, "to": "s", **({"op": first_op} if first_op else {})},
                {"from": "s", "to": "t", "op": name},
            ]
            last = "t"
            if len(out) == 3:  # an image: flatten it before the linear read-out
                nodes["f"] = {"width": math.prod(out), "bias": False}
                edges.append({"from": "t", "to": "f", "op": "flatten"})
                last = "f"
            nodes["out"] = {"width": 3}
            edges.append({"from": last, "to": "out"})
            return {
                "name": f"op-{name}",
                "inputs": {inp: inp_spec},
                "nodes": nodes,
                "edges": edges,
                "outputs": ["out"],
            }
    raise AssertionError(f"no test source/target fits op {name!r}: extend SOURCES/TARGETS")


def activation_spec(name: str) -> dict:
    return {
        "name": f"act-{name}",
        "inputs": {"x": {"shape": [4]}},
        "nodes": {"h": {"width": 6, "activation": name}, "out": {"width": 2, "activation": name}},
        "edges": [{"from": "x", "to": "h"}, {"from": "h", "to": "out"}, {"from": "x", "to": "out"}],
        "outputs": ["out"],
    }


def check_forward_backward(data: dict, dtype: torch.dtype) -> None:
    spec = parse_spec(data)
    model = compile(spec, seed=0, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    xs = [(3 * torch.randn(32, *s.shape, generator=g)).to(dtype) for s in spec.inputs.values()]
    out = model(*xs)
    assert out.dtype == dtype and torch.isfinite(out).all()
    (out.square().sum() + out.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list_ops())
def test_every_op_compiles_and_trains(name, dtype):
    data = op_spec(name)
    check_forward_backward(data, dtype)
    model = compile(parse_spec(data))
    has_weight = "edges.s__t.weight" in dict(model.named_parameters())
    assert has_weight == op_info(name).parametric


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list_activations())
def test_every_activation_compiles_and_trains(name, dtype):
    check_forward_backward(activation_spec(name), dtype)


def schema_choices(model: str, field: str) -> tuple[list[str], dict[str, str]]:
    """The shorthand names and the discriminator mapping the JSON Schema offers for a field."""
    choices = json_schema()["$defs"][model]["properties"][field]["anyOf"]
    names = next(c["enum"] for c in choices if "enum" in c)
    mapping = next(c["discriminator"]["mapping"] for c in choices if "discriminator" in c)
    return names, mapping


def test_the_schema_offers_every_op_and_activation():
    names, mapping = schema_choices("EdgeSpec", "op")
    assert names == list_ops() and sorted(mapping) == sorted(list_ops())
    names, mapping = schema_choices("NodeSpec", "activation")
    assert names == list_activations() and sorted(mapping) == sorted(list_activations())


@pytest.mark.parametrize("name", list_ops())
def test_every_op_has_a_summary(name):
    info = op_info(name)
    assert info.name == name and len(info.summary) > 5


@pytest.mark.parametrize("name", list_activations())
def test_every_activation_declares_its_one_sided_slopes_at_zero(name):
    """The slopes the first-order gain uses, (sigma'(0-), sigma'(0+)), against one-sided finite
    differences of the built module in float64 (a kink is declared in the registry, a smooth activation
    has both equal to autograd's sigma'(0)); a prelu's learnable slope is read from its module."""
    info = activation_info(name)
    spec = info.model(name=name)
    module = spec.build().to(torch.float64)
    if name == "prelu":
        with torch.no_grad():
            module.weight.fill_(0.7)
    h = 1e-7
    with torch.no_grad():
        f = module(torch.tensor([-h, 0.0, h], dtype=torch.float64))
    left, right = float(f[1] - f[0]) / h, float(f[2] - f[1]) / h
    slopes = one_sided_slopes(spec, module)
    assert slopes == pytest.approx((left, right), abs=1e-5)
    assert (info.one_sided is not None) == (abs(left - right) > 1e-3)
    z = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    expected = torch.tensor([-2 * slopes[0], 0.0, 3 * slopes[1]], dtype=torch.float64)
    assert torch.allclose(directional_derivative(z, slopes), expected)


@pytest.mark.parametrize("name", list_activations())
def test_every_activation_has_a_summary(name):
    info = activation_info(name)
    assert info.name == name and len(info.summary) > 5


def test_every_op_yaml_uses_every_op_and_activation():
    spec = load_spec(ROOT / "specs" / "every_op.yaml")
    assert {e.op.type for e in spec.edges} == set(list_ops())
    assert {n.activation.name for n in spec.nodes.values()} == set(list_activations())


def test_the_language_reference_documents_every_op_and_activation():
    reference = (ROOT / "docs" / "spec.md").read_text()
    for name in [*list_ops(), *list_activations()]:
        assert f"| `{name}` |" in reference, f"docs/spec.md has no table row for {name!r}"


# --------------------------------------------------------------------------------------------------
# Tasks, inits and losses: one contract per registry entry
# --------------------------------------------------------------------------------------------------


def mlp_spec(name: str, input_shape: tuple[int, ...], outputs: int) -> dict:
    """x -> h (4, tanh) -> out, the input flat (fit_task reshapes flat samples to it when needed)."""
    return {
        "name": name,
        "inputs": {"x": {"shape": [math.prod(input_shape)]}},
        "nodes": {"h": {"width": 4, "activation": "tanh"}, "out": {"width": outputs}},
        "edges": [{"from": "x", "to": "h"}, {"from": "h", "to": "out"}],
        "outputs": ["out"],
    }


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_builds_and_fits_a_matching_spec(name):
    task = make_task(name, seed=0, n=60)
    assert task.name == name and TASKS.summaries()[name] == task_info(name).summary
    assert len(task.train) + len(task.val) + len(task.test) == 60
    spec = parse_spec(mlp_spec(f"fit-{name}", task.input_shape, task.output_dim))
    fitted = fit_task(task, spec)
    model = compile(spec, seed=0)
    x, y = next(fitted.batches("train"))
    loss = loss_function(fitted.loss)(model(x), y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert math.isfinite(fitted.metric(model(x), y))


def widen_setting() -> tuple:
    """A float64 DAG x -> h -> out measured on a batch: (spec, model, stats, the site widen:h)."""
    spec = parse_spec(
        {
            "name": "inits",
            "inputs": {"x": {"shape": [3]}},
            "nodes": {"h": {"width": 2, "activation": "tanh"}, "out": {"width": 2}},
            "edges": [{"from": "x", "to": "h"}, {"from": "h", "to": "out"}],
            "outputs": ["out"],
            "growth": {"widen": ["h"], "new_nodes": "none"},
        }
    )
    model = compile(spec, seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    y = torch.sin(3 * x[:, :2]) + x[:, 2:].cos()
    site = find_site(spec, "widen:h")
    return spec, model, measure(model, [(x, y)], "mse", sites=[site]), site


@pytest.mark.parametrize("init", INITS.names())
def test_every_init_proposes_neurons_at_a_widen_site(init):
    spec, model, stats, site = widen_setting()
    p = propose(stats, site, init, 2, weights=model.state_dict())
    assert p.init == init and p.skipped is None and p.neurons >= 2
    assert p.fan_in.dtype == torch.float64 and p.fan_in.shape == (p.neurons, stats.dim(site.sources))
    assert {w: t.shape for w, t in p.fan_out.items()} == {"out": (2, p.neurons)}
    assert torch.isfinite(p.fan_in).all() and all(torch.isfinite(t).all() for t in p.fan_out.values())
    assert math.isfinite(p.first_order_improvement)
    assert init in INITS.summaries() and len(INITS.summaries()[init]) > 5


def test_function_preserving_inits_are_registered_inits():
    assert FUNCTION_PRESERVING <= set(INITS) and "tiny" not in FUNCTION_PRESERVING


# example (output, target) of each loss: a new loss needs one here
LOSS_EXAMPLES = {
    "mse": lambda g: (torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)),
    "cross_entropy": lambda g: (torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)),
}


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_gives_a_finite_scalar_and_a_gradient(name):
    assert name in LOSS_EXAMPLES, f"add an example input of loss {name!r} to LOSS_EXAMPLES"
    output, target = LOSS_EXAMPLES[name](torch.Generator().manual_seed(0))
    output.requires_grad_(True)
    loss = loss_function(name)(output, target)
    assert loss_function(name) is LOSSES.get(name)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert output.grad is not None and torch.isfinite(output.grad).all()


def test_a_callable_loss_is_used_as_is_and_an_unknown_name_gets_a_hint():
    def hinge(output, target):
        return (1 - output * target).clamp_min(0).mean()

    assert loss_function(hinge) is hinge
    with pytest.raises(UnknownName, match=r"unknown loss 'MSE' \(did you mean 'mse'\?\).*or a callable"):
        loss_function("MSE")


# --------------------------------------------------------------------------------------------------
# The one "did you mean" helper
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, known, hint",
    [
        ("TINY", INITS, "tiny"),  # case
        ("teacher-student", TASKS, "teacher_student"),  # hyphen for underscore
        ("teacher_student", ["teacher-student", "sin50"], "teacher-student"),  # and back
        ("amplitude", STRATEGIES, "amplitude_factor"),  # a prefix
        ("cross_entropi", LOSSES, "cross_entropy"),  # a close spelling
        ("sin5O", TASKS, "sin50"),
    ],
)
def test_did_you_mean_suggests_the_closest_name(name, known, hint):
    assert did_you_mean(name, known) == f" (did you mean {hint!r}?)"


def test_did_you_mean_is_silent_when_nothing_is_close():
    assert did_you_mean("zzzz", INITS) == ""
    assert did_you_mean("a", ["alpha", "amplitude"]) == ""  # an ambiguous prefix suggests nothing


def test_an_unknown_name_lists_every_choice_with_the_hint():
    with pytest.raises(UnknownName) as info:
        INITS.get("TINY")
    assert str(info.value) == (
        "unknown init 'TINY' (did you mean 'tiny'?); expected one of: " + ", ".join(INITS.names())
    )
    assert isinstance(info.value, ValueError)
    assert unknown_name_message("task", "nope", ["a", "b"]) == "unknown task 'nope'; expected one of: a, b"


@pytest.mark.parametrize("name", vocabulary_names())
def test_dagrow_list_shows_every_entry_of_every_vocabulary(name):
    result = CliRunner().invoke(app, ["list", name], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    entries = vocabulary(name)
    assert entries, name
    for entry, summary in entries:
        assert entry in result.stdout and summary, (name, entry)


def test_dagrow_list_suggests_a_vocabulary():
    result = CliRunner().invoke(app, ["list", "strategy"])
    assert result.exit_code == 1
    assert "did you mean 'strategies'" in result.stderr
