"""The networkx view of a spec: checks with paths, topological order, shapes, tied sizes, sizes."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from dagrow import GraphSpec, analyze, compile, load_spec, num_params
from dagrow.graph import Problem, check_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


def spec_of(data: dict) -> GraphSpec:
    """A GraphSpec that passed pydantic but not (necessarily) the graph checks."""
    return GraphSpec.model_validate(data)


def chain(**extra) -> dict:
    data = {
        "inputs": {"x": {"shape": [4]}},
        "nodes": {"h": {"width": 3}, "out": {"width": 2}},
        "edges": [{"from": "x", "to": "h"}, {"from": "h", "to": "out"}],
        "outputs": ["out"],
    }
    data.update(extra)
    return data


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_example_specs_pass_the_checks(path):
    spec = load_spec(path)
    assert check_spec(spec) == []
    sg = analyze(spec)
    assert nx.is_directed_acyclic_graph(sg.dag)
    position = sg.position
    assert all(position[e.source] < position[e.target] for e in spec.edges)
    assert sg.order[: len(spec.inputs)] == list(spec.inputs)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_num_params_matches_the_compiled_model(path):
    spec = load_spec(path)
    model = compile(spec)
    assert num_params(spec) == sum(p.numel() for p in model.parameters())


def test_order_follows_declaration_among_ready_nodes():
    spec = load_spec(ROOT / "specs" / "dag_skip.yaml")
    sg = analyze(spec)
    assert sg.order == ["x", "a", "b", "m", "out"]
    assert sg.hidden_and_outputs == ["a", "b", "m", "out"]
    assert sg.preds("m") == ["a", "b"]
    assert sg.preds("out") == ["m", "x"]  # declaration order of the edges
    assert sg.succs("x") == ["a", "b", "out"]
    assert [e.key for e in sg.in_edges("out")] == ["m__out", "x__out"]
    assert [e.key for e in sg.out_edges("a")] == ["a__m"]
    assert sg.in_edges("x") == [] and sg.out_edges("out") == []


def test_shapes_of_the_conv_net():
    sg = analyze(load_spec(ROOT / "specs" / "conv_digits.yaml"))
    assert sg.shapes == {
        "img": (1, 8, 8),
        "c1": (8, 8, 8),
        "p1": (8, 4, 4),
        "flat": (128,),
        "hidden": (16,),
        "out": (10,),
    }
    assert [v for v in sg.order if sg.is_flat(v)] == ["flat", "hidden", "out"]


def test_tied_sizes_say_why():
    sg = analyze(load_spec(ROOT / "specs" / "conv_digits.yaml"))
    tied = sg.tied
    assert tied["img"].startswith("an input")
    assert tied["out"].startswith("an output")
    assert "max_pool" in tied["c1"] and "max_pool" in tied["p1"]
    assert "flatten" in tied["flat"]
    assert "hidden" not in tied  # free to grow


def test_check_spec_paths_point_into_the_data():
    problems = check_spec(
        spec_of(
            chain(
                edges=[{"from": "x", "to": "h"}, {"from": "hh", "to": "out"}, {"from": "h", "to": "nowhere"}]
            )
        )
    )
    assert [p.path for p in problems] == [("edges", 1, "from"), ("edges", 2, "to")]
    assert all(isinstance(p, Problem) for p in problems)


def test_cycle_names_the_closing_edge():
    data = chain(
        nodes={"a": {"width": 2}, "b": {"width": 2}, "out": {"width": 2}},
        edges=[
            {"from": "x", "to": "a"},
            {"from": "a", "to": "b"},
            {"from": "b", "to": "a"},
            {"from": "b", "to": "out"},
        ],
    )
    (problem,) = check_spec(spec_of(data))
    assert problem.path == ("edges", 2)
    assert problem.message in ("cycle: a -> b -> a", "cycle: b -> a -> b")


def test_input_listed_as_node_and_repeated_output():
    data = chain(nodes={"h": {"width": 3}, "out": {"width": 2}, "x": {"width": 4}}, outputs=["out", "out"])
    messages = [p.message for p in check_spec(spec_of(data))]
    assert "'x' is both an input and a node" in messages
    assert "an output is listed twice" in messages


def test_growth_pairs_must_name_known_nodes():
    (problem,) = check_spec(spec_of(chain(growth={"new_nodes": [["x", "hq"]]})))
    assert problem.path == ("growth", "new_nodes", 0)
    assert problem.message == "unknown node 'hq' in pair x->hq (did you mean 'h'?)"


def test_analyze_refuses_a_shape_mismatch():
    data = chain(edges=[{"from": "x", "to": "h", "op": "identity"}, {"from": "h", "to": "out"}])
    with pytest.raises(ValueError, match="identity from a source of width 4"):
        analyze(spec_of(data))


def test_num_params_counts_bias_and_activation_parameters():
    data = chain(
        nodes={
            "h": {"width": 3, "activation": "rational", "bias": False},
            "out": {"width": 2, "activation": "prelu"},
        }
    )
    # weights 4*3 + 3*2, biases 0 + 2, rational 3, prelu 1
    assert num_params(spec_of(data)) == 12 + 6 + 2 + 3 + 1
