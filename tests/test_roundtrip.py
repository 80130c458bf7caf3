"""Invariant 1 of the design: load -> compile -> save bundle -> load -> compile gives the same canonical
spec and bit-identical outputs, on every spec of specs/ and on random DAG specs (hypothesis)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagrow import GraphSpec, analyze, compile, list_activations, load, load_spec, save
from dagrow.activations import activation_info
from dagrow.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


def outputs(model, xs) -> tuple[torch.Tensor, ...]:
    out = model(*xs)
    return out if isinstance(out, tuple) else (out,)


def assert_round_trip(spec: GraphSpec, folder: Path, seed: int = 0) -> None:
    spec = load_spec(spec.to_yaml())  # load
    model = compile(spec, seed=seed)  # compile
    path = save(model, folder / "model.safetensors")  # save bundle
    loaded = load(path)  # load
    again = compile(loaded.spec, loaded.state_dict())  # compile
    assert loaded.spec == spec and again.spec == spec
    assert again.spec.to_yaml() == spec.to_yaml()
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(9, *s.shape, generator=g) for s in spec.inputs.values()]
    expected = outputs(model, xs)
    for other in (loaded, again):
        got = outputs(other, xs)
        assert len(got) == len(spec.outputs)
        for a, b in zip(expected, got, strict=True):
            assert torch.equal(a, b)  # bit-identical


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_round_trip_of_every_example_spec(path, tmp_path):
    assert_round_trip(load_spec(path), tmp_path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_round_trip_keeps_the_dtype(dtype, tmp_path):
    model = compile(ROOT / "specs" / "every_op.yaml", seed=0, dtype=dtype)
    with torch.no_grad():  # values a float32 detour would round
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-9)
    loaded = load(save(model, tmp_path / "m.safetensors"))
    recompiled = compile(model.spec, model.state_dict())
    xs = [torch.randn(4, *s.shape, dtype=dtype) for s in model.spec.inputs.values()]
    for other in (loaded, recompiled):
        assert all(p.dtype == dtype for p in other.parameters())
        assert all(
            torch.equal(a, b)
            for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True)
        )
        assert torch.equal(model(*xs), other(*xs))


# ---------------------------------------------------------------------------------------------
# random valid DAG specs
# ---------------------------------------------------------------------------------------------


@st.composite
def activations(draw):
    """An activation from the registry, sometimes with its settings drawn too."""
    name = draw(st.sampled_from(list_activations()))
    fields = {k: f for k, f in activation_info(name).model.model_fields.items() if k != "name"}
    if not fields or draw(st.booleans()):
        return name
    return {"name": name, **{k: draw(st.floats(0.1, 2.0)) for k in fields}}


@st.composite
def dag_specs(draw) -> dict:
    """A few inputs, then nodes in topological order, each with at least one edge from an earlier node or
    input; widths 1..8; activations from the registry. Outputs are the nodes nothing reads."""
    inputs = {f"x{i}": {"shape": [draw(st.integers(1, 8))]} for i in range(draw(st.integers(1, 3)))}
    width = {x: s["shape"][0] for x, s in inputs.items()}
    nodes: dict[str, dict] = {}
    edges: list[dict] = []
    for j in range(draw(st.integers(1, 7))):
        v = f"n{j}"
        width[v] = draw(st.integers(1, 8))
        nodes[v] = {"width": width[v], "activation": draw(activations()), "bias": draw(st.booleans())}
        earlier = [u for u in width if u != v]
        for u in draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=3, unique=True)):
            identity = width[u] == width[v] and draw(st.booleans())
            edges.append({"from": u, "to": v, "op": "identity" if identity else "linear"})
    read = {e["from"] for e in edges}
    for x in inputs:
        if x not in read:  # every input must reach an output
            edges.append({"from": x, "to": draw(st.sampled_from(list(nodes)))})
    read = {e["from"] for e in edges}
    data = {
        "name": "random",
        "inputs": inputs,
        "nodes": nodes,
        "edges": edges,
        "outputs": [v for v in nodes if v not in read],
    }
    if draw(st.booleans()):
        widen = draw(st.lists(st.sampled_from(list(nodes)), unique=True))
        data["growth"] = {
            "widen": widen,
            "new_nodes": draw(st.sampled_from(["edges", "all", "none"])),
            "max_width": draw(st.integers(8, 64)),
        }
    return data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_specs(), st.integers(0, 2**16))
def test_round_trip_of_random_dag_specs(data, seed):
    spec = parse_spec(data)
    sg = analyze(spec)
    assert all(sg.position[e.source] < sg.position[e.target] for e in spec.edges)
    with tempfile.TemporaryDirectory() as folder:
        assert_round_trip(spec, Path(folder), seed)
