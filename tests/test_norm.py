"""Normalisation on nodes (``norm:``): the spec language, the compiled module against explicit float64
formulas, bundles, growth of normed nodes (function preservation in eval and train mode, the first-order
prediction with a norm in the path) and exports."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bruteforce import random_inputs, random_target

import dagrow
from dagrow.compile import expected_tensors
from dagrow.export import export_program, to_dot
from dagrow.graph import num_params
from dagrow.growth.actions import proposal_actions
from dagrow.growth.amplitude import GrownFamily
from dagrow.growth.inits import FUNCTION_PRESERVING
from dagrow.growth.proposals import propose
from dagrow.growth.shared_forward import SharedForward, proposal_outputs
from dagrow.norms import list_norms, running_stats_kept
from dagrow.rewrite import AddNeurons, replay
from dagrow.sites import enumerate_sites, find_site
from dagrow.spec import SpecError, load_spec
from dagrow.stats import measure

MLP = """
inputs: {x: {shape: [4]}}
nodes:
  h1: {width: 5, activation: tanh}
  h2: {width: 3, norm: batch_norm, activation: tanh}
  out: {width: 2}
edges:
  - {from: x, to: h1}
  - {from: h1, to: h2}
  - {from: h2, to: out}
outputs: [out]
growth: {new_nodes: all, new_edges: all, new_node_activation: tanh}
"""

EVERY_NORM = """
inputs: {x: {shape: [5]}}
nodes:
  b: {width: 6, norm: {type: batch_norm, momentum: 0.3, eps: 0.001}, activation: tanh}
  l: {width: 6, norm: layer_norm, activation: tanh}
  g: {width: 6, norm: {type: group_norm, groups: 3}, activation: tanh, bias: true}
  out: {width: 2}
edges:
  - {from: x, to: b}
  - {from: b, to: l}
  - {from: l, to: g}
  - {from: g, to: out}
outputs: [out]
"""

IMAGE = """
inputs: {x: {shape: [2, 5, 5]}}
nodes:
  c1: {channels: 4, norm: batch_norm, activation: tanh}
  c2: {channels: 4, norm: {type: group_norm, groups: 2}, activation: tanh}
  c3: {channels: 4, norm: layer_norm, activation: tanh}
  f: {width: 100}
  out: {width: 3}
edges:
  - {from: x, to: c1, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c1, to: c2, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c2, to: c3, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c3, to: f, op: flatten}
  - {from: f, to: out}
outputs: [out]
growth: {widen: none, new_nodes: none}
"""


def setup(text: str, n: int = 32, seed: int = 0, train_steps: int = 3):
    """(spec, float64 model, inputs, target); ``train_steps`` forward passes in train mode first, so that
    the running statistics are not at their initial 0 and 1."""
    spec = load_spec(text)
    model = dagrow.compile(spec, dtype=torch.float64, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    xs = random_inputs(spec, n, gen)
    with torch.no_grad():
        for _ in range(train_steps):
            model(*[x * 1.7 + 0.3 for x in xs])
    return spec, model, xs, random_target(spec, n, gen)


def _problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(text)
    return info.value.report()


# --------------------------------------------------------------------------------------------------
# the spec language
# --------------------------------------------------------------------------------------------------


def test_groups_that_do_not_divide_the_size_name_the_node_and_its_line():
    text = MLP.replace("norm: batch_norm", "norm: {type: group_norm, groups: 2}")
    (line,) = _problems(text)
    assert line.startswith("<string>:5:")  # the line of h2
    assert "node 'h2'" in line and "2 groups do not divide the node's width 3" in line


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        (
            "batch_nrom",
            "unknown norm 'batch_nrom'; expected one of 'batch_norm', 'layer_norm', 'group_norm' ",
        ),
        ("{type: layer_norm, momentum: 0.5}", "unknown key 'momentum'"),
        ("{type: group_norm}", "groups: Field required"),
        ("{type: group_norm, groups: 0}", "greater than 0"),
        ("{type: batch_norm, eps: 0}", "eps: Input should be greater than 0"),
        ("{type: batch_norm, momentum: 1.5}", "momentum: Input should be less than or equal to 1"),
        ("{type: batch_norm, affine: 1}", "affine: Input should be a valid boolean"),
    ],
)
def test_bad_norms_are_located_errors(norm, expected):
    (line,) = _problems(MLP.replace("norm: batch_norm", f"norm: {norm}"))
    assert line.startswith("<string>:5:") and "node 'h2'" in line and expected in line, line


def test_a_normalised_node_has_no_bias_unless_asked():
    spec = load_spec(EVERY_NORM)
    assert [spec.nodes[v].bias for v in ("b", "l", "g", "out")] == [False, False, True, True]
    again = load_spec(spec.to_yaml())
    assert again == spec  # the canonical YAML writes the bias, so it round-trips
    assert "norm: layer_norm" in spec.to_yaml()  # every setting default: the shorthand
    tensors = expected_tensors(spec)
    assert "nodes.b.bias" not in tensors and "nodes.g.bias" in tensors


def test_parameter_count_includes_the_affine_norm_parameters():
    spec = load_spec(EVERY_NORM)
    model = dagrow.compile(spec)
    assert num_params(spec) == sum(p.numel() for p in model.parameters())
    no_affine = load_spec(EVERY_NORM.replace("norm: layer_norm", "norm: {type: layer_norm, affine: false}"))
    assert num_params(spec) - num_params(no_affine) == 12
    assert "nodes.l.norm.weight" not in expected_tensors(no_affine)


def test_every_norm_is_in_the_schema_and_the_vocabulary():
    from dagrow.vocabularies import vocabulary

    schema = dagrow.json_schema()
    text = str(schema)
    for name in list_norms():
        assert name in text
    assert [k for k, _ in vocabulary("norms")] == list_norms()


# --------------------------------------------------------------------------------------------------
# the compiled module
# --------------------------------------------------------------------------------------------------


def test_stable_names_and_modules():
    flat = dagrow.compile(EVERY_NORM)
    image = dagrow.compile(IMAGE)
    names = set(flat.state_dict()) | set(image.state_dict())
    for v in ("b", "c1"):
        for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert f"nodes.{v}.norm.{suffix}" in names
    for v in ("l", "g", "c2", "c3"):
        assert {f"nodes.{v}.norm.weight", f"nodes.{v}.norm.bias"} <= names
        assert f"nodes.{v}.norm.running_mean" not in names
    kinds = {
        v: type(m.get_submodule(f"nodes.{v}.norm"))
        for m in (flat, image)
        for v in m.spec.nodes
        if v in "blgc1c2c3"
    }
    assert kinds["b"] is torch.nn.BatchNorm1d and kinds["c1"] is torch.nn.BatchNorm2d
    assert kinds["l"] is torch.nn.LayerNorm and kinds["g"] is torch.nn.GroupNorm
    assert image.get_submodule("nodes.c3.norm").num_groups == 1  # image layer norm: over [C, H, W]
    order = [n.name for n in flat.graph.nodes]
    assert order.index("a_b") < order.index("norm_b") < order.index("b")
    assert (
        flat.get_submodule("nodes.b.norm").momentum == 0.3 and flat.get_submodule("nodes.b.norm").eps == 1e-3
    )


def _normalise(a: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    mean = a.mean(dims, keepdim=True)
    var = ((a - mean) ** 2).mean(dims, keepdim=True)  # biased, as every torch norm normalises
    return (a - mean) / torch.sqrt(var + eps)


def _explicit_forward(model, spec, x: torch.Tensor, training: bool) -> tuple[torch.Tensor, dict]:
    """The model's output computed by hand (float64), with each node's pre-activation."""
    w = {k: v.detach() for k, v in model.state_dict().items()}
    values, pre = {"x": x}, {}
    for v in [n for n in spec.nodes]:
        (e,) = [e for e in spec.edges if e.target == v]
        u = values[e.source]
        if e.op.type == "linear":
            a = u @ w[f"edges.{e.source}__{v}.weight"].T
        elif e.op.type == "conv2d":
            a = F.conv2d(u, w[f"edges.{e.source}__{v}.weight"], padding=1)
        else:
            a = u.flatten(1)
        if spec.nodes[v].bias:
            b = w[f"nodes.{v}.bias"]
            a = a + (b.view(-1, 1, 1) if a.dim() == 4 else b)
        pre[v] = a
        norm, shape = spec.nodes[v].norm, (1, -1, 1, 1) if a.dim() == 4 else (1, -1)
        if norm is not None:
            if norm.type == "batch_norm":
                dims = (0, 2, 3) if a.dim() == 4 else (0,)
                if training:
                    a = _normalise(a, dims, norm.eps)
                else:
                    mean, var = w[f"nodes.{v}.norm.running_mean"], w[f"nodes.{v}.norm.running_var"]
                    a = (a - mean.view(shape)) / torch.sqrt(var.view(shape) + norm.eps)
            else:
                groups = norm.groups if norm.type == "group_norm" else 1
                grouped = a.reshape(a.shape[0], groups, -1)
                a = _normalise(grouped, (2,), norm.eps).reshape(a.shape)
            a = a * w[f"nodes.{v}.norm.weight"].view(shape) + w[f"nodes.{v}.norm.bias"].view(shape)
        values[v] = torch.tanh(a) if spec.nodes[v].activation.name == "tanh" else a
    return values["out"], pre


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("text", [EVERY_NORM, IMAGE], ids=["flat", "image"])
def test_the_compiled_model_equals_the_explicit_formulas(text, training):
    spec, model, (x,), _ = setup(text)
    with torch.no_grad():  # random affine parameters, so that weight 1 and bias 0 hide nothing
        for name, p in model.named_parameters():
            if ".norm." in name:
                p.copy_(
                    torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(len(name)))
                )
    model.train(training)
    pre: dict[str, torch.Tensor] = {}
    post: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(f"nodes.{v}").register_forward_hook(lambda m, i, o, v=v: pre.__setitem__(v, o))
        for v in spec.nodes
    ]
    handles += [
        model.get_submodule(f"nodes.{v}.activation").register_forward_hook(
            lambda m, i, o, v=v: post.__setitem__(v, o)
        )
        for v in spec.nodes
    ]
    with torch.no_grad(), running_stats_kept(model):
        out = model(x)
    for h in handles:
        h.remove()
    expected, expected_pre = _explicit_forward(model, spec, x, training)
    assert (out - expected).abs().max() <= 1e-12
    # the statistics' contract: nodes.<v> returns the summed input plus bias, before the norm
    for v in spec.nodes:
        assert (pre[v] - expected_pre[v]).abs().max() <= 1e-12, v
    assert (post["out"] - out).abs().max() == 0


def test_a_bundle_round_trips_bit_identically_with_its_running_statistics(tmp_path):
    for text in (EVERY_NORM, IMAGE):
        spec, model, (x,), _ = setup(text, train_steps=5)
        assert (
            float(model.get_submodule(f"nodes.{next(iter(spec.nodes))}.norm").running_var.sub(1).abs().max())
            > 1e-3
        )
        path = dagrow.save(model, tmp_path / "m.safetensors")
        loaded = dagrow.load(path)
        before, after = model.state_dict(), loaded.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
        model.eval()
        loaded.eval()
        with torch.no_grad():
            assert torch.equal(model(x), loaded(x))


# --------------------------------------------------------------------------------------------------
# growth
# --------------------------------------------------------------------------------------------------


def test_layer_and_group_normed_nodes_are_not_widened_with_the_reason():
    spec = load_spec(EVERY_NORM)
    sites = {s.id: s for s in enumerate_sites(spec)}
    assert sites["widen:b"].supported
    for v, norm in (("l", "layer_norm"), ("g", "group_norm")):
        assert not sites[f"widen:{v}"].supported
        assert f"{v} has a {norm}, whose statistics mix the node's channels" in sites[f"widen:{v}"].reason


def test_widening_appends_the_identity_channels_to_the_norm():
    spec, model, xs, _ = setup(MLP)
    w = model.state_dict()
    fan_in = torch.randn(2, 5, dtype=torch.float64)  # h2 has no bias: sources (h1,)
    fan_out = {"out": torch.zeros(2, 2, dtype=torch.float64)}
    spec2, w2 = AddNeurons("h2", ("h1",), fan_in, fan_out).apply(spec, w)
    eps = spec.nodes["h2"].norm.eps
    for suffix, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0 - eps)):
        name = f"nodes.h2.norm.{suffix}"
        assert torch.equal(w2[name][:3], w[name]) and torch.equal(
            w2[name][3:], torch.full((2,), value, dtype=torch.float64)
        )
    assert torch.equal(w2["nodes.h2.norm.num_batches_tracked"], w["nodes.h2.norm.num_batches_tracked"])
    # in eval mode the new channels' norm is the identity: their post-activation is tanh(fan_in h1)
    grown = dagrow.compile(spec2, w2).eval()
    post = {}
    grown.get_submodule("nodes.h2.activation").register_forward_hook(lambda m, i, o: post.setdefault("h2", o))
    with torch.no_grad():
        grown(*xs)
        h1 = model.eval().get_submodule("nodes.h1.activation")(
            model.get_submodule("nodes.h1")(xs[0] @ w["edges.x__h1.weight"].T)
        )
    assert (post["h2"][:, 3:] - torch.tanh(h1 @ fan_in.T)).abs().max() <= 1e-12


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("init", sorted(FUNCTION_PRESERVING))
def test_function_preserving_inits_on_a_batch_normed_node(init, training):
    spec, model, xs, y = setup(MLP)
    model.train(training)
    stats = measure(model, [(tuple(xs), y)])
    with torch.no_grad(), running_stats_kept(model):
        base = model(*xs)
    p = propose(stats, find_site(spec, "widen:h2"), init, 3, weights=model.state_dict())
    assert p.neurons > 0
    family = GrownFamily(model, p, update=False)
    forward = SharedForward(model, xs)
    shared = proposal_outputs(forward, p, update=False)
    for gamma in (0.0, 0.3, 1.0, 7.0):
        with torch.no_grad():
            assert (family(gamma, *xs) - base).abs().max() <= 1e-12, gamma
            assert (shared(gamma) - base).abs().max() <= 1e-12, gamma
    spec2, w2 = replay(spec, model.state_dict(), proposal_actions(p, spec, 2.5, update=False))
    grown = dagrow.compile(spec2, w2, dtype=torch.float64).train(training)
    with torch.no_grad():
        assert (grown(*xs) - base).abs().max() <= 1e-12


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_the_shared_forward_applies_the_new_channels_norm(training):
    """TINY's neurons in a batch-normed node: the line search's outputs equal the grown model's, in eval
    mode (the new channels' norm is the identity) and in train mode (normalised by the batch)."""
    spec, model, xs, y = setup(MLP)
    model.train(training)
    stats = measure(model, [(tuple(xs), y)])
    p = propose(stats, find_site(spec, "widen:h2"), "tiny", 2, weights=model.state_dict())
    assert p.neurons > 0
    family = GrownFamily(model, p)
    shared = proposal_outputs(SharedForward(model, xs), p)
    for gamma in (0.01, 0.5, 2.0):
        with torch.no_grad():
            assert (family(gamma, *xs) - shared(gamma)).abs().max() <= 1e-12, gamma


GAMMA = 1e-6


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_first_order_prediction_with_a_batch_norm_in_the_path(training):
    """g_w = n dL/da_w flows through the batch norm of h2 by autograd. In train mode the norm couples the
    samples of the batch, but the first-order change of the batch's mean loss is still
    sum_i dL/da(x_i) . da(x_i) = (1/n) sum_i g(x_i) . da(x_i): exact, provided the statistics and the
    finite differences see the same batch in the same mode."""
    spec, model, xs, y = setup(MLP, n=48)
    model.train(training)
    stats = measure(model, [(tuple(xs), y)])
    with torch.no_grad(), running_stats_kept(model):
        base = float(F.mse_loss(model(*xs), y))
    checked = set()
    for site in enumerate_sites(spec, include_unsupported=False):
        normed_neurons = site.kind == "widen" and spec.nodes[site.node].norm is not None
        if normed_neurons and training:
            continue  # new channels normalised by the batch: not of order gamma (docs/growing.md)
        if "h2" not in site.targets and not normed_neurons:
            continue  # the norm is in the path of h2's pre-activation (and of widen:h2's new channels)
        for init in ["tiny"] if site.kind == "edge" else ["tiny", "gradmax", "north"]:
            p = propose(stats, site, init, 2, weights=model.state_dict())
            if p.neurons == 0 and p.edge_weight is None:
                continue
            family = GrownFamily(model, p)
            with torch.no_grad():
                fd = (base - float(F.mse_loss(family(GAMMA, *xs), y))) / GAMMA
            assert abs(p.first_order_improvement) > 1e-4
            assert abs(fd - p.first_order_improvement) <= 1e-4 * abs(p.first_order_improvement), (
                site.id,
                init,
                fd,
                p.first_order_improvement,
            )
            checked.add(site.id)
    assert {"widen:h1", "node:x->h2", "edge:x->h2"} <= checked
    assert ("widen:h2" in checked) == (not training)


def test_streamed_statistics_equal_the_concatenated_batch_in_eval_mode_only():
    spec, model, xs, y = setup(MLP, n=40)
    halves = [((xs[0][:20],), y[:20]), ((xs[0][20:],), y[20:])]
    sites = enumerate_sites(spec, include_unsupported=False)
    model.eval()
    one, two = measure(model, [((xs[0],), y)], sites=sites), measure(model, halves, sites=sites)
    for key in one.grad_sums:
        assert (one.grad_sums[key] - two.grad_sums[key]).abs().max() <= 1e-12, key
    for key in one.pair_sums:
        assert (one.pair_sums[key] - two.pair_sums[key]).abs().max() <= 1e-12, key
    # in train mode each batch is normalised by its own statistics: the gradients through the norm differ
    model.train()
    one, two = measure(model, [((xs[0],), y)], sites=sites), measure(model, halves, sites=sites)
    assert max(float((one.grad_sums[k] - two.grad_sums[k]).abs().max()) for k in one.grad_sums) > 1e-6


def test_statistics_and_decisions_leave_the_running_statistics_alone():
    spec, model, xs, y = setup(MLP)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure(model, [(tuple(xs), y)])
    grower = dagrow.Grower(model, loss="mse", growths=1, neurons=2, seed=0)
    step = grower.step(model, None, [(xs[0], y)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert step.actions, "the step grew nothing"
    grown = step.model.state_dict()
    for k, v in before.items():  # the grown model's tensors extend the old ones
        assert torch.equal(grown[k][tuple(slice(0, s) for s in v.shape)], v), k
    assert step.model.training


@pytest.mark.parametrize(
    "text, strategy",
    [(IMAGE, "amplitude_factor"), (IMAGE, "naive"), (IMAGE, "max_eigenvalue"), (MLP, "natural")],
)
def test_a_plan_called_directly_leaves_the_running_statistics_alone(text, strategy):
    # the statistics pass, the shared forward and every line-search evaluation run the model in train
    # mode; without the guard each moved the batch norms' running statistics towards the candidates
    text = text.replace("growth: {widen: none, new_nodes: none}", "growth: {widen: all, new_edges: all}")
    spec, model, xs, y = setup(text)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sites = enumerate_sites(spec, include_unsupported=False)
    chosen = dagrow.GrowthConfig(strategy=strategy, neurons=1).make_strategy()
    plan = chosen.plan(model, (tuple(xs) if len(xs) > 1 else xs[0], y), "mse", sites)
    assert plan.actions, plan.reason
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_grow_a_normed_mlp_then_export_and_reload_bit_identically(tmp_path):
    text = MLP.replace(
        "h1: {width: 5, activation: tanh}",
        "h1: {width: 5, norm: {type: batch_norm, momentum: 0.5}, activation: tanh}",
    )
    text = text.replace("new_nodes: all, new_edges: all", "new_nodes: none, new_edges: none")  # widen only
    spec, model, xs, y = setup(text, n=64, train_steps=0)
    grower = dagrow.Grower(model, loss="mse", growths=3, neurons=2, seed=0, strategy="amplitude_factor")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    while not grower.finished:
        for _ in range(5):
            opt.zero_grad()
            F.mse_loss(model(*xs), y).backward()
            opt.step()
        model = grower.step(model, opt, [(xs[0], y)]).model
    grown = [a for a in grower.actions if a.kind != "update_weights"]
    assert len(grown) >= 2 and all(a.kind == "add_neurons" and a.node in ("h1", "h2") for a in grown)
    path = dagrow.save(model, tmp_path / "grown.safetensors")
    loaded = dagrow.load(path)
    assert loaded.spec == model.spec
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(*xs), loaded(*xs))
        program = export_program(loaded.train()).module()
        assert loaded.training  # the export ran in eval mode and gave the mode back
        assert (program(*xs) - model(*xs)).abs().max() <= 1e-12
    dot = to_dot(model.spec)
    assert "batch_norm momentum=0.5" in dot and "batch_norm\\n" in dot


def test_in_train_mode_new_batch_normed_channels_escape_the_first_order_prediction():
    """What docs/growing.md says of TINY on a batch-normed node: in eval mode the new channels' norm is
    the identity and the neurons' first-order gain is as predicted; in train mode a new channel is
    centred and divided by sqrt(batch variance + eps), about z / sqrt(eps) while gamma var(z) << eps,
    so the loss change per unit gamma is far from the prediction (and stays so as gamma -> 0)."""
    spec, model, xs, y = setup(MLP, n=48)
    for training in (False, True):
        model.train(training)
        stats = measure(model, [(tuple(xs), y)])
        p = propose(stats, find_site(spec, "widen:h2"), "tiny", 2, weights=model.state_dict())
        share = p.first_order_improvement - p.d  # the new neurons' predicted first-order gain
        family = GrownFamily(model, p, update=False)
        with torch.no_grad(), running_stats_kept(model):
            base = float(F.mse_loss(model(*xs), y))
            per_gamma = [(base - float(F.mse_loss(family(g, *xs), y))) / g for g in (1e-7, 1e-8)]
        assert share > 1e-3
        if training:
            assert min(abs(v) for v in per_gamma) > 10 * share
            assert per_gamma[0] == pytest.approx(per_gamma[1], rel=0.05)  # of order gamma, amplified
        else:
            assert per_gamma[1] == pytest.approx(share, rel=1e-3)


def test_pt2_and_png_exports_of_image_norms(tmp_path):
    pytest.importorskip("matplotlib")
    from dagrow.drawing import node_lines
    from dagrow.export import write_png, write_pt2

    spec, model, (x,), _ = setup(IMAGE, n=4, train_steps=4)
    path = write_pt2(model, tmp_path / "m.pt2")
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        assert (program(x) - model.eval()(x)).abs().max() <= 1e-12
    assert node_lines(spec, "c2", (4, 5, 5))[2] == "group_norm groups=2"
    write_png(spec, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_params_added_counts_the_new_channels_of_the_norm():
    spec, model, xs, y = setup(MLP)
    stats = measure(model, [(tuple(xs), y)])
    p = propose(stats, find_site(spec, "widen:h2"), "tiny", 2, weights=model.state_dict())
    grown, _ = replay(spec, model.state_dict(), proposal_actions(p, spec, 1.0))
    assert p.neurons == 2 and p.params_added == num_params(grown) - num_params(spec)
