"""The compiler: parameter names, several inputs and outputs, dtypes and devices, readable code, meta."""

from __future__ import annotations

import math
import operator
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from dagrow import DagModel, compile, load_spec, load_weights, spec_of
from dagrow.compile import WeightsMismatch

ROOT = Path(__file__).resolve().parents[1]
SPECS = {p.stem: p for p in sorted((ROOT / "specs").glob("*.yaml"))}


def random_inputs(spec, n=5, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *s.shape, generator=g, dtype=dtype).to(device) for s in spec.inputs.values()]


def test_parameter_names_are_the_documented_ones():
    model = compile(SPECS["every_op"], seed=0)
    names = dict(model.named_parameters())
    assert "edges.img__conv.weight" in names and names["edges.img__conv.weight"].shape == (3, 2, 3, 3)
    assert names["edges.flat__h1.weight"].shape == (5, 12)
    assert names["nodes.h1.bias"].shape == (5,)
    assert names["nodes.conv.bias"].shape == (3,)
    assert "nodes.avg.bias" not in names  # bias: false
    assert names["nodes.h3.activation.weight"].shape == (1,)  # prelu
    assert {"nodes.h4.activation.v", "nodes.h4.activation.c", "nodes.h4.activation.l"} <= set(names)
    assert not any(k.startswith("edges.conv__avg") for k in names)  # pooling has no parameter
    for k in names:
        kind, rest = k.split(".", 1)
        assert kind in ("edges", "nodes"), k


def test_several_inputs_and_outputs_compute_the_spec():
    spec = load_spec(SPECS["two_in_two_out"])
    model = compile(spec, seed=0, dtype=torch.float64)
    u, v = random_inputs(spec, dtype=torch.float64)
    head_a, head_b = model(u, v)
    w = dict(model.named_parameters())
    trunk = torch.tanh(
        u @ w["edges.u__trunk.weight"].T + v @ w["edges.v__trunk.weight"].T + w["nodes.trunk.bias"]
    )
    expect_a = trunk @ w["edges.trunk__head_a.weight"].T + w["nodes.head_a.bias"]
    expect_b = torch.sigmoid(
        trunk @ w["edges.trunk__head_b.weight"].T + v @ w["edges.v__head_b.weight"].T + w["nodes.head_b.bias"]
    )
    torch.testing.assert_close(head_a, expect_a, rtol=0, atol=1e-12)
    torch.testing.assert_close(head_b, expect_b, rtol=0, atol=1e-12)
    assert head_a.shape == (5, 2) and head_b.shape == (5, 1)


def test_single_output_is_a_tensor_and_conv_net_runs():
    spec = load_spec(SPECS["conv_digits"])
    (img,) = random_inputs(spec)
    out = compile(spec, seed=0)(img)
    assert isinstance(out, torch.Tensor) and out.shape == (5, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_dtypes_on_cpu(name, dtype):
    spec = load_spec(SPECS[name])
    model = compile(spec, seed=0, dtype=dtype)
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in model.parameters())
    outs = model(*random_inputs(spec, dtype=dtype))
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert all(o.dtype == dtype and torch.isfinite(o).all() for o in outs)


def test_float32_and_float64_agree():
    spec = load_spec(SPECS["every_op"])
    m32, m64 = compile(spec, seed=0), compile(spec, seed=0, dtype=torch.float64)
    x32 = random_inputs(spec)
    torch.testing.assert_close(m32(*x32).double(), m64(*[x.double() for x in x32]), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    spec = load_spec(SPECS["every_op"])
    cpu = compile(spec, seed=0, dtype=dtype)
    gpu = compile(spec, seed=0, dtype=dtype, device="cuda")
    assert all(p.is_cuda for p in gpu.parameters())
    xs = random_inputs(spec, dtype=dtype)
    out = gpu(*[x.cuda() for x in xs])
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), cpu(*xs), rtol=1e-4, atol=1e-5)


def test_generated_code_is_readable():
    model = compile(SPECS["mlp_sin50"], seed=0)
    code = model.code
    assert "def forward(self, x):" in code
    for line in (
        "x__h1 = self.edges.x__h1(x)",
        "a_h1 = self.nodes.h1(x__h1)",
        "h1 = self.nodes.h1.activation(a_h1)",
        "return out",
    ):
        assert line in code, code
    model = compile(SPECS["dag_skip"], seed=0)
    assert "sum_m = a__m + b__m" in model.code
    assert "getattr" not in model.code


def test_node_meta_carries_spec_ids():
    spec = load_spec(SPECS["every_op"])
    model = compile(spec, seed=0)
    edge_ids = {f"{e.source}->{e.target}": e.op.type for e in spec.edges}
    roles = set()
    for node in model.graph.nodes:
        if node.op == "output" or node.target is operator.add:
            continue
        meta = node.meta["dagrow"]
        roles.add(meta["role"])
        if meta["role"] == "input":
            assert meta["id"] in spec.inputs and node.op == "placeholder"
        elif meta["role"] == "edge":
            assert edge_ids[meta["id"]] == meta["op"]
            assert node.target == "edges." + meta["id"].replace("->", "__")
        else:
            assert meta["id"] in spec.nodes
            suffix = ".activation" if meta["role"] == "activation" else ""
            assert node.target == f"nodes.{meta['id']}{suffix}"
    assert roles == {"input", "edge", "preactivation", "activation"}


def test_model_is_a_graph_module_that_knows_its_spec():
    spec = load_spec(SPECS["dag_skip"])
    model = compile(spec)
    assert isinstance(model, DagModel) and isinstance(model, fx.GraphModule)
    assert model.spec is spec and spec_of(model) is spec
    assert type(model).__name__ == "DagSkip"
    assert compile(str(SPECS["dag_skip"])).spec == spec
    with pytest.raises(TypeError, match="not compiled by dagrow"):
        spec_of(nn.Linear(2, 2))


def test_seed_makes_initialisation_reproducible_and_bounded():
    spec = load_spec(SPECS["dag_skip"])
    a, b, c = compile(spec, seed=1), compile(spec, seed=1), compile(spec, seed=2)
    for (k, pa), pb, pc in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), k
        assert not torch.equal(pa, pc), k
    # fan-in of node out sums both edges into it: m (4) and x (8)
    bound = 1 / math.sqrt(4 + 8)
    for k in ("edges.m__out.weight", "edges.x__out.weight", "nodes.out.bias"):
        assert a.state_dict()[k].abs().max() <= bound


def test_weights_replace_the_initialisation():
    spec = load_spec(SPECS["dag_skip"])
    source = compile(spec, seed=3)
    model = compile(spec, source.state_dict(), seed=4)
    (x,) = random_inputs(spec)
    assert torch.equal(model(x), source(x))


def test_load_weights_lists_every_mismatch():
    model = compile(SPECS["mlp_sin50"], seed=0)
    weights = dict(model.state_dict())
    weights["edges.x__h1.weight"] = torch.zeros(5, 50)
    weights["edges.x__h9.weight"] = torch.zeros(4, 50)
    del weights["nodes.h2.bias"]
    with pytest.raises(WeightsMismatch) as info:
        load_weights(model, weights)
    assert str(info.value).split("; ") == [
        "missing tensor 'nodes.h2.bias' (shape [4])",
        "tensor 'edges.x__h1.weight' has shape [5, 50] but the spec needs [4, 50]",
        "unexpected tensor 'edges.x__h9.weight' (shape [4, 50]): the spec has no such parameter",
    ]


def test_backward_reaches_every_parameter_of_every_spec():
    for name, path in SPECS.items():
        spec = load_spec(path)
        model = compile(spec, seed=0, dtype=torch.float64)
        outs = model(*random_inputs(spec, n=16, dtype=torch.float64))
        outs = outs if isinstance(outs, tuple) else (outs,)
        sum((o**2).sum() for o in outs).backward()
        for k, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (name, k)
