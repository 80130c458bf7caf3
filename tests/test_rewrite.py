"""Growth actions: function preservation at gamma = 0, DeepenEdge, JSON round trips, errors, purity."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import networkx as nx
import pytest
import torch
from bruteforce import HAND_WRITTEN, linear_sources

import dagrow
from dagrow.graph import analyze
from dagrow.rewrite import (
    ACTIONS,
    AddEdge,
    AddNeurons,
    AddNode,
    DeepenEdge,
    RewriteError,
    UpdateWeights,
    action_from_dict,
    new_node_name,
    replay,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted([*ROOT.glob("specs/*.yaml"), *ROOT.glob("dagrow/specs/*.yaml")])
IDENTITY_AT_INIT = [
    {"name": "prelu", "init": 1.0},
    {"name": "rational"},
    "identity",
]


def all_specs():
    for name, text in sorted(HAND_WRITTEN.items()):
        yield pytest.param(text, id=name)
    for path in SPEC_FILES:
        yield pytest.param(path, id=path.stem)


def model_and_inputs(source, n: int = 6, seed: int = 0):
    spec = dagrow.load_spec(source)
    model = dagrow.compile(spec, dtype=torch.float64, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn(n, *s.shape, generator=gen, dtype=torch.float64) for s in spec.inputs.values()]
    return spec, model, xs


def outputs(spec, weights, xs) -> tuple[torch.Tensor, ...]:
    out = dagrow.compile(spec, weights, dtype=torch.float64)(*xs)
    return out if isinstance(out, tuple) else (out,)


def max_diff(a, b) -> float:
    assert len(a) == len(b)
    return max(float((x - y).detach().abs().max()) for x, y in zip(a, b, strict=True))


def widths(spec) -> dict[str, int]:
    return {v: int(torch.tensor(s).prod()) for v, s in analyze(spec).shapes.items()}


def candidate_actions(spec, weights, gamma: float, seed: int = 0) -> list:
    """One action of every kind on every place of the (flat, linear) spec it fits, random tensors."""
    gen = torch.Generator().manual_seed(seed)
    sg, w = analyze(spec), widths(spec)

    def rnd(*shape):
        return torch.randn(tuple(shape), generator=gen, dtype=torch.float64)

    acts: list = [
        UpdateWeights({k: rnd(*v.shape) for k, v in weights.items() if v.is_floating_point()}, gamma)
    ]
    for h in spec.nodes:
        if h in spec.outputs or any(e.op.type != "linear" for e in sg.in_edges(h) + sg.out_edges(h)):
            continue
        src = tuple(e.source for e in sg.in_edges(h)) + (("1",) if spec.nodes[h].bias else ())
        dim = sum(1 if s == "1" else w[s] for s in src)
        acts.append(AddNeurons(h, src, rnd(2, dim), {t: rnd(w[t], 2) for t in sg.succs(h)}, gamma))
    names = list(sg.order)
    for u in names:
        for t in spec.nodes:
            if u == t or nx.has_path(sg.dag, t, u) or not (sg.is_flat(u) and sg.is_flat(t)):
                continue
            # sigmoid(0) != 0: only the zero fan-out keeps the function at gamma = 0
            acts.append(
                AddNode(u, t, new_node_name(spec, u, t), rnd(3, w[u] + 1), rnd(w[t], 3), "sigmoid", gamma)
            )
            if not sg.dag.has_edge(u, t):
                acts.append(AddEdge(u, t, rnd(w[t], w[u]), gamma))
    return acts


@pytest.mark.parametrize("source", list(all_specs()))
def test_every_action_at_gamma_zero_leaves_the_outputs_unchanged(source):
    spec, model, xs = model_and_inputs(source)
    weights = model.state_dict()
    base = outputs(spec, weights, xs)
    acts = candidate_actions(spec, weights, 0.0)
    assert {a.kind for a in acts} >= {"update_weights", "add_node"}
    for a in acts:
        spec2, w2 = a.apply(spec, weights)
        assert spec2 != spec or a.kind == "update_weights"
        assert max_diff(outputs(spec2, w2, xs), base) <= 1e-12, a.describe()


@pytest.mark.parametrize("source", list(all_specs()))
def test_actions_change_the_spec_as_described(source):
    spec, model, xs = model_and_inputs(source)
    weights = model.state_dict()
    for a in candidate_actions(spec, weights, 0.5):
        spec2, w2 = a.apply(spec, weights)
        expected = dagrow.compile(spec2).state_dict()
        assert {k: tuple(v.shape) for k, v in w2.items()} == {k: tuple(v.shape) for k, v in expected.items()}
        if isinstance(a, AddNeurons):
            assert spec2.nodes[a.node].width == spec.nodes[a.node].width + 2
            for s in linear_sources(spec, a.node):  # old rows kept, new rows scaled by sqrt(gamma)
                name = f"nodes.{a.node}.bias" if s == "1" else f"edges.{s}__{a.node}.weight"
                assert torch.equal(w2[name][: weights[name].shape[0]], weights[name])
        elif isinstance(a, AddNode):
            assert spec2.nodes[a.name].width == 3 and spec2.nodes[a.name].activation.name == "sigmoid"
            torch.testing.assert_close(w2[f"edges.{a.name}__{a.target}.weight"], 0.5**0.5 * a.fan_out)
        elif isinstance(a, AddEdge):
            torch.testing.assert_close(w2[f"edges.{a.source}__{a.target}.weight"], 0.5 * a.weight)
        elif isinstance(a, UpdateWeights):
            for k, d in a.deltas.items():
                torch.testing.assert_close(w2[k], weights[k] - 0.5 * d)


def linear_edges(source):
    spec = dagrow.load_spec(source)
    return [(e.source, e.target) for e in spec.edges if e.op.type == "linear"]


@pytest.mark.parametrize("activation", IDENTITY_AT_INIT, ids=["prelu", "rational", "identity"])
@pytest.mark.parametrize("source", list(all_specs()))
def test_deepen_edge_preserves_the_function_and_its_parameters_learn(source, activation):
    spec, model, xs = model_and_inputs(source)
    weights = model.state_dict()
    base = outputs(spec, weights, xs)
    edges = linear_edges(source)
    assert edges
    for u, w in edges:
        m = new_node_name(spec, u, w)
        spec2, w2 = DeepenEdge(u, w, m, activation).apply(spec, weights)
        assert (u, w) not in [(e.source, e.target) for e in spec2.edges]
        assert spec2.nodes[m].width == widths(spec)[u]
        grown = dagrow.compile(spec2, w2, dtype=torch.float64)
        out = grown(*xs)
        out = out if isinstance(out, tuple) else (out,)
        assert max_diff(out, base) <= 1e-12, (u, w)
        loss = sum((o - 0.3).pow(2).sum() for o in out)
        loss.backward()
        new = [
            k
            for k, _ in grown.named_parameters()
            if k.startswith(f"nodes.{m}.") or f"__{m}." in k or f".{m}__" in k
        ]
        assert f"edges.{u}__{m}.weight" in new and f"edges.{m}__{w}.weight" in new
        for name in new:
            g = grown.get_parameter(name).grad
            assert g is not None and torch.isfinite(g).all(), (u, w, name)
        for name in (f"edges.{u}__{m}.weight", f"edges.{m}__{w}.weight"):
            assert torch.count_nonzero(grown.get_parameter(name).grad) > 0, (u, w, name)


def test_deepen_edge_with_a_non_identity_activation_changes_the_function():
    """A sanity check of the test above: the identity is what keeps the function, not luck."""
    spec, model, xs = model_and_inputs(HAND_WRITTEN["mlp"])
    spec2, w2 = DeepenEdge("h1", "h2", "m", "tanh").apply(spec, model.state_dict())
    assert max_diff(outputs(spec2, w2, xs), outputs(spec, model.state_dict(), xs)) > 1e-6


def test_deepening_a_listed_edge_removes_it_from_the_deepen_list():
    """growth.deepen: [[h1, h2], [h2, out]]: after h1 -> m -> h2 the pair h1 -> h2 is no edge any more
    (the grown spec would be invalid), so the list keeps only the other pair."""
    text = HAND_WRITTEN["mlp"].replace(
        "growth: {new_edges: all", "growth: {deepen: [[h1, h2], [h2, out]], new_edges: all"
    )
    spec, model, xs = model_and_inputs(text)
    spec2, w2 = DeepenEdge("h1", "h2", "m", "identity").apply(spec, model.state_dict())
    assert [tuple(p) for p in spec2.growth.deepen] == [("h2", "out")]
    assert max_diff(outputs(spec2, w2, xs), outputs(spec, model.state_dict(), xs)) < 1e-12


def roundtrip(action):
    data = json.loads(json.dumps(action.to_dict()))
    return action_from_dict(data)


@pytest.mark.parametrize("source", list(all_specs()))
def test_actions_round_trip_through_json_and_replay_bit_identically(source):
    spec, model, xs = model_and_inputs(source)
    weights = model.state_dict()
    acts = candidate_actions(spec, weights, 0.37, seed=4)
    acts += [
        DeepenEdge(u, w, new_node_name(spec, u, w), a)
        for i, (u, w) in enumerate(linear_edges(source))
        for a in [IDENTITY_AT_INIT[i % len(IDENTITY_AT_INIT)]]
    ]
    for a in acts:
        b = roundtrip(a)
        assert type(b) is type(a)
        assert b.to_dict() == a.to_dict()
        spec_a, w_a = a.apply(spec, weights)
        spec_b, w_b = b.apply(spec, weights)
        assert spec_a == spec_b
        assert w_a.keys() == w_b.keys() and all(torch.equal(w_a[k], w_b[k]) for k in w_a)
        for x, y in zip(outputs(spec_a, w_a, xs), outputs(spec_b, w_b, xs), strict=True):
            assert torch.equal(x, y), a.describe()


def test_a_history_replays_bit_identically():
    spec, model, xs = model_and_inputs(HAND_WRITTEN["skip"])
    weights = model.state_dict()
    gen = torch.Generator().manual_seed(0)
    history = [
        AddNeurons(
            "h1",
            ("x", "1"),
            torch.randn(2, 5, generator=gen, dtype=torch.float64),
            {
                "h2": torch.randn(3, 2, generator=gen, dtype=torch.float64),
                "out": torch.randn(2, 2, generator=gen, dtype=torch.float64),
            },
            0.2,
        ),
        AddEdge("x", "out", torch.randn(2, 4, generator=gen, dtype=torch.float64), 0.1),
        DeepenEdge("h2", "out", "h2_out"),
        AddNode(
            "x",
            "h2_out",
            "x_h2_out",
            torch.randn(2, 5, generator=gen, dtype=torch.float64),
            torch.randn(3, 2, generator=gen, dtype=torch.float64),
            "tanh",
            0.3,
        ),
        UpdateWeights({"nodes.out.bias": torch.randn(2, generator=gen, dtype=torch.float64)}, 0.05),
    ]
    spec_a, w_a = replay(spec, weights, history)
    saved = json.dumps([a.to_dict() for a in history])
    spec_b, w_b = replay(spec, weights, [action_from_dict(d) for d in json.loads(saved)])
    assert spec_a == spec_b and list(spec_a.nodes) == list(spec_b.nodes)
    assert torch.equal(outputs(spec_a, w_a, xs)[0], outputs(spec_b, w_b, xs)[0])
    # replay is the same as applying the actions one by one
    s, w = spec, weights
    for a in history:
        s, w = a.apply(s, w)
    assert s == spec_a and all(torch.equal(w[k], w_a[k]) for k in w)
    # and the grown spec survives its own YAML round trip
    again = dagrow.load_spec(spec_a.to_yaml())
    assert again == spec_a
    assert torch.equal(outputs(again, w_a, xs)[0], outputs(spec_a, w_a, xs)[0])


def _bad_actions():
    z = torch.zeros
    d = torch.float64
    return [
        (AddNeurons("nope", ("x", "1"), z(2, 6, dtype=d), {"h2": z(4, 2, dtype=d)}), "nope"),
        (AddNeurons("h1", ("x",), z(2, 5, dtype=d), {"h2": z(4, 2, dtype=d)}), "h1"),
        (AddNeurons("h1", ("x", "1"), z(2, 5, dtype=d), {"h2": z(4, 2, dtype=d)}), "h1"),
        (AddNeurons("h1", ("x", "1"), z(2, 6, dtype=d), {"out": z(3, 2, dtype=d)}), "h1"),
        (AddNeurons("h1", ("x", "1"), z(2, 6, dtype=d), {"h2": z(3, 2, dtype=d)}), "h1"),
        (AddNode("x", "h2", "h1", z(2, 6, dtype=d), z(4, 2, dtype=d)), "h1"),
        (AddNode("nope", "h2", "m", z(2, 6, dtype=d), z(4, 2, dtype=d)), "nope"),
        (AddNode("x", "nope", "m", z(2, 6, dtype=d), z(4, 2, dtype=d)), "nope"),
        (AddNode("x", "x", "m", z(2, 6, dtype=d), z(5, 2, dtype=d)), "'x'"),
        (AddNode("x", "h2", "m", z(2, 5, dtype=d), z(4, 2, dtype=d)), "x->m->h2"),
        (AddNode("x", "h2", "m", z(2, 6, dtype=d), z(3, 2, dtype=d)), "x->m->h2"),
        (AddNode("h2", "h1", "m", z(2, 5, dtype=d), z(3, 2, dtype=d)), "cycle"),
        (AddEdge("h1", "h2", z(4, 3, dtype=d)), "h1->h2"),
        (AddEdge("nope", "h2", z(4, 3, dtype=d)), "nope"),
        (AddEdge("x", "nope", z(4, 5, dtype=d)), "nope"),
        (AddEdge("x", "h2", z(4, 3, dtype=d)), "x->h2"),
        (AddEdge("h2", "h1", z(3, 4, dtype=d)), "h2 -> h1"),
        (DeepenEdge("x", "h2", "m"), "x->h2"),
        (DeepenEdge("x", "h1", "h2"), "'h2'"),
        (UpdateWeights({"nodes.h9.bias": z(3, dtype=d)}), "h9"),
        (UpdateWeights({"nodes.h1.bias": z(4, dtype=d)}), "nodes.h1.bias"),
    ]


@pytest.mark.parametrize(
    ("action", "named"), _bad_actions(), ids=lambda v: v if isinstance(v, str) else v.kind
)
def test_bad_actions_raise_rewrite_error_naming_the_node(action, named):
    spec, model, xs = model_and_inputs(HAND_WRITTEN["mlp"])
    with pytest.raises(RewriteError) as info:
        action.apply(spec, model.state_dict())
    assert named in str(info.value)
    assert action.kind.split("_")[0] in str(info.value)  # and which action complained


def test_unknown_action_kind_is_a_rewrite_error():
    with pytest.raises(RewriteError, match="unknown action 'grow'.*add_neurons"):
        action_from_dict({"action": "grow"})
    assert set(ACTIONS) == {"update_weights", "add_neurons", "add_node", "add_edge", "deepen_edge"}


@pytest.mark.parametrize("source", list(all_specs()))
def test_apply_does_not_mutate_its_inputs(source):
    spec, model, xs = model_and_inputs(source)
    weights = dict(model.state_dict())
    acts = candidate_actions(spec, weights, 0.8, seed=2)
    acts += [DeepenEdge(u, w, new_node_name(spec, u, w)) for u, w in linear_edges(source)]
    spec_before = copy.deepcopy(spec.model_dump())
    weights_before = {k: v.clone() for k, v in weights.items()}
    ids = {k: id(v) for k, v in weights.items()}
    for a in acts:
        a_before = a.to_dict()
        _, w2 = a.apply(spec, weights)
        assert a.to_dict() == a_before
        assert spec.model_dump() == spec_before
        assert list(weights) == list(weights_before) and {k: id(v) for k, v in weights.items()} == ids
        assert all(torch.equal(weights[k], weights_before[k]) for k in weights)
        # the result shares no storage with the input: writing into it leaves the model alone
        for k, t in w2.items():
            if k in weights:
                assert t.data_ptr() != weights[k].data_ptr(), (a.describe(), k)
    assert all(torch.equal(p, weights_before[k]) for k, p in model.state_dict().items())


def test_a_new_node_name_is_always_a_valid_fresh_name():
    """``n<k>`` with the smallest free k: names taken by nodes or inputs are skipped, and the pair's
    names (``state`` + ``dict`` would once have made ``state_dict``, a module attribute) do not enter."""
    from dagrow.names import name_problem
    from dagrow.rewrite import new_node_name

    spec = dagrow.load_spec(
        "version: 1\ninputs: {n1: {shape: [2]}}\nnodes: {dict: {width: 2}, n2: {width: 2}, n4: {width: 2}}\n"
        "edges: [{from: n1, to: dict}, {from: n1, to: n2}, {from: n2, to: dict}, {from: n2, to: n4}]\n"
        "outputs: [dict, n4]\n"
    )
    name = new_node_name(spec, "n1", "dict")
    assert name == "n3" and name_problem(name) is None
    assert new_node_name(spec) == name  # the same spec, the same name


@pytest.mark.parametrize("chain", [False, True], ids=["same-pair", "nested"])
def test_twenty_insertions_give_short_distinct_names(chain):
    """20 insertions between x and out (or each between x and the last inserted node, where the old
    ``u_w`` names nested) give n1 ... n20: bounded length, never a concatenation of inserted names."""
    from dagrow.names import name_problem

    spec = dagrow.load_spec(
        "version: 1\ninputs: {x: {shape: [3]}}\nnodes: {h: {width: 4, activation: tanh}, out: {width: 2}}\n"
        "edges: [{from: x, to: h}, {from: h, to: out}, {from: x, to: out}]\noutputs: [out]\n"
    )
    model = dagrow.compile(spec, seed=0, dtype=torch.float64)
    weights = dict(model.state_dict())
    x = torch.randn(5, 3, dtype=torch.float64)
    base = model(x)
    names, w = [], "out"
    for _ in range(20):
        name = new_node_name(spec, "x", w)
        width = spec.nodes[w].width
        fan_in = torch.randn(2, 4, dtype=torch.float64)
        spec, weights = AddNode(
            "x", w, name, fan_in, torch.zeros(width, 2, dtype=torch.float64), "tanh"
        ).apply(spec, weights)
        names.append(name)
        w = name if chain else w
    assert names == [f"n{k}" for k in range(1, 21)]
    assert all(len(n) <= 3 and name_problem(n) is None for n in names)
    grown = dagrow.compile(spec, weights, dtype=torch.float64)
    torch.testing.assert_close(grown(x), base, rtol=0, atol=1e-12)  # zero fan-out: unchanged
