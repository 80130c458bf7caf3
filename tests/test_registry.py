"""Contract tests over the whole registry: every op and every activation compiles, runs forward and
backward without NaN, and every parameter receives a gradient. A newly registered op or activation is
tested here without writing a test for it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dagrow import compile, json_schema, list_activations, list_ops, load_spec
from dagrow.ops import ShapeError, activation_info, op_info
from dagrow.spec import parse_spec

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
