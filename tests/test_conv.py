"""Growth of convolutional DAGs in float64 against brute force.

The reference re-implements the forward pass from the spec and the weights (conv2d by explicit patches
cut out of the zero-padded input with loops, not ``unfold``), gets each sample's gradient d l_i / d a_v
by autograd on its own loss, and builds every moment from explicit row matrices: one row per (sample,
output position), as DESIGN.md's convention for convolutions says (a sample contributes the sum over
its positions).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import dagrow
from dagrow.features import Geometry, base, is_one, parse_geometry
from dagrow.growth.actions import proposal_actions
from dagrow.growth.proposals import FUNCTION_PRESERVING, propose, propose_all
from dagrow.rewrite import DeepenEdge, replay
from dagrow.sites import enumerate_sites, find_site
from dagrow.spec import GraphSpec
from dagrow.stats import measure

TOL = dict(rtol=1e-9, atol=1e-11)

CNN = """
version: 1
name: cnn
inputs: {img: {shape: [2, 6, 6]}}
nodes:
  c1: {channels: 3, activation: tanh}
  c2: {channels: 4, activation: tanh}
  r: {channels: 4, activation: tanh}
  s: {channels: 4, activation: tanh}
  p: {channels: 4, bias: false}
  flat: {width: 36, bias: false}
  out: {width: 3}
edges:
  - {from: img, to: c1, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c1, to: c2, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: img, to: c2, op: {type: conv2d, kernel: 1}}
  - {from: c2, to: r, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c2, to: s, op: identity}
  - {from: r, to: s, op: {type: conv2d, kernel: 1}}
  - {from: s, to: p, op: {type: avg_pool, kernel: 2}}
  - {from: p, to: flat, op: flatten}
  - {from: flat, to: out}
outputs: [out]
growth: {new_nodes: all, new_edges: all, deepen: all, new_node_activation: tanh}
"""


def _patches(x: Tensor, g: Geometry) -> Tensor:
    """[n, C, H, W] -> [n * L, C * kh * kw] by explicit slicing of the zero-padded input (rows in
    the order sample, then position row by row)."""
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
    xp = F.pad(x, (pw, pw, ph, ph))
    n, c, H, W = xp.shape
    oh, ow = (H - kh) // sh + 1, (W - kw) // sw + 1
    cuts = [
        xp[:, :, a * sh : a * sh + kh, b * sw : b * sw + kw].reshape(n, -1)
        for a in range(oh)
        for b in range(ow)
    ]
    return torch.stack(cuts, 1).reshape(n * oh * ow, -1)


FLAT = """
version: 1
name: flat-head
inputs: {img: {shape: [3, 5, 5]}}
nodes:
  c1: {channels: 3, activation: tanh}
  c2: {channels: 2, activation: tanh}
  f: {width: 50, bias: false}
  out: {width: 3}
edges:
  - {from: img, to: c1, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c1, to: c2, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c2, to: f, op: flatten}
  - {from: f, to: out}
outputs: [out]
growth: {new_node_activation: tanh}
"""
POOL = """
version: 1
name: pooled
inputs: {img: {shape: [2, 6, 6]}}
nodes:
  c1: {channels: 3, activation: tanh}
  p: {channels: 3, bias: false}
  c2: {channels: 2, activation: tanh}
  q: {channels: 2, bias: false}
  f: {width: 8, bias: false}
  out: {width: 3}
edges:
  - {from: img, to: c1, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c1, to: p, op: {type: avg_pool, kernel: 2}}
  - {from: p, to: c2, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c2, to: q, op: {type: avg_pool, kernel: 2, stride: 1}}
  - {from: q, to: f, op: flatten}
  - {from: f, to: out}
outputs: [out]
growth: {new_node_activation: tanh}
"""
SPECS = {"cnn": CNN, "flat": FLAT, "pool": POOL}
SAMPLES = {"cnn": 6, "flat": 80, "pool": 40}  # more samples than the targets' features (else Vperp = 0)


def _image_rows(t: Tensor) -> Tensor:
    n, c, h, w = t.shape
    return torch.stack([t[:, :, a, b] for a in range(h) for b in range(w)], 1).reshape(n * h * w, c)


def _act(name: str, x: Tensor) -> Tensor:
    return {"tanh": torch.tanh, "identity": lambda v: v, "relu": torch.relu}[name](x)


def ref_forward(spec: GraphSpec, weights, x: Tensor, eps=None):
    """(pre, post, output) from the spec, conv2d by explicit patches."""
    post = {next(iter(spec.inputs)): x}
    pre = {}
    for v in spec.nodes:  # the specs below list their nodes in topological order
        a = 0
        for e in spec.edges:
            if e.target != v:
                continue
            b = post[e.source]
            t = e.op.type
            if t == "conv2d":
                g = Geometry.of(e.op)
                W = weights[f"edges.{e.key}.weight"]
                n = b.shape[0]
                oh, ow = g.out_grid(tuple(b.shape[2:]))
                a = a + (_patches(b, g) @ W.reshape(W.shape[0], -1).T).reshape(n, oh, ow, -1).permute(
                    0, 3, 1, 2
                )
            elif t == "linear":
                a = a + b @ weights[f"edges.{e.key}.weight"].T
            elif t == "identity":
                a = a + b
            elif t == "avg_pool":
                a = a + F.avg_pool2d(b, e.op.kernel, e.op.stride or e.op.kernel)
            elif t == "flatten":
                a = a + b.flatten(1)
            else:  # pragma: no cover
                raise NotImplementedError(t)
        if spec.nodes[v].bias:
            bias = weights[f"nodes.{v}.bias"]
            a = a + (bias.reshape(1, -1, 1, 1) if a.dim() == 4 else bias)
        if eps is not None:
            a = a + eps[v]
        pre[v] = a
        post[v] = _act(spec.nodes[v].activation.name, a)
    return pre, post, post[spec.outputs[0]]


class Ref:
    """Rows of every feature and per-sample gradients of one batch (float64)."""

    def __init__(self, spec: GraphSpec, weights, x: Tensor, y: Tensor) -> None:
        weights = {k: v.detach().double() for k, v in weights.items()}
        self.spec, self.n = spec, x.shape[0]
        _, self.post, out = ref_forward(spec, weights, x)
        self.loss = float(F.mse_loss(out, y))
        grads: dict[str, list[Tensor]] = {v: [] for v in spec.nodes}
        for i in range(self.n):
            pre_i, _, _ = ref_forward(spec, weights, x[i : i + 1])
            eps = {v: torch.zeros_like(p, requires_grad=True) for v, p in pre_i.items()}
            _, _, out_i = ref_forward(spec, weights, x[i : i + 1], eps)
            gs = torch.autograd.grad(F.mse_loss(out_i, y[i : i + 1]), list(eps.values()))
            for v, gv in zip(eps, gs, strict=True):
                grads[v].append(gv)
        self.grad = {v: torch.cat(g) for v, g in grads.items()}
        self.grad_rows = {v: _image_rows(g) if g.dim() == 4 else g for v, g in self.grad.items()}

    def rows(self, feature: str, grid_of: str) -> Tensor:
        """Rows of a feature on the grid of node ``grid_of`` (or flat)."""
        if "/" in feature:  # pooled and/or summed on the way to the targets
            inner, *steps = feature.split("/")
            node = None if is_one(inner) else base(inner)
            if node is None:
                h, w = (int(v) for v in inner.partition("#")[2].split("x"))
                image = torch.ones(self.n, 1, h, w, dtype=torch.float64)
            else:
                value = self.post[node].detach()
                geo = parse_geometry(inner)
                patches = _patches(value, geo)
                oh, ow = geo.out_grid(tuple(value.shape[2:]))
                image = patches.reshape(self.n, oh, ow, -1).permute(0, 3, 1, 2)
            for step in steps:
                if step.startswith("avg"):
                    k, _, rest = step[3:].partition("s")
                    stride = rest.partition("p")[0]
                    image = F.avg_pool2d(image, int(k.split("x")[0]), int(stride.split("x")[0]))
            return image.sum((2, 3)) if steps[-1] == "sum" else _image_rows(image)
        g = self.grad[grid_of]
        count = self.n * (g.shape[2] * g.shape[3] if g.dim() == 4 else 1)
        if is_one(feature):
            return torch.ones(count, 1, dtype=torch.float64)
        geometry = parse_geometry(feature)
        value = self.post[base(feature)].detach()
        return value if geometry is None else _patches(value, geometry)

    def B(self, features, grid_of: str) -> Tensor:
        return torch.cat([self.rows(f, grid_of) for f in features], 1)


def setup(text: str = CNN, n: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    spec = dagrow.load_spec(text)
    model = dagrow.compile(spec, dtype=torch.float64)
    with torch.no_grad():  # a larger scale than the default init, for visible gradients
        for p in model.parameters():
            p.mul_(2.0)
    x = torch.randn(n, *spec.inputs["img"].shape, dtype=torch.float64)
    y = torch.randn(n, spec.nodes["out"].width, dtype=torch.float64)
    return spec, model, x, y


def _supported(spec, kinds=("widen", "node", "edge")):
    return [s for s in enumerate_sites(spec) if s.supported and s.kind in kinds]


def test_conv_sites_and_their_reasons():
    spec = dagrow.load_spec(CNN)
    sites = {s.id: s for s in enumerate_sites(spec)}
    assert sites["widen:c1"].supported and sites["widen:c1"].sources == ("img#3x3s1x1p1x1", "1#6x6")
    assert sites["widen:c1"].targets == ("c2",)
    assert sites["node:c1->r"].supported and sites["edge:img->r"].supported
    assert sites["deepen:c1->c2"].supported
    assert "s sums more than what c2 sends it" in sites["widen:c2"].reason  # a residual join
    assert "flat node" in sites["node:c2->out"].reason
    assert "different grids" in sites["node:img->p"].reason
    strided = CNN.replace(
        "{from: c1, to: c2, op: {type: conv2d, kernel: 3, padding: 1}}",
        "{from: c1, to: c2, op: {type: conv2d, kernel: 3, padding: 1, stride: 2}}",
    )
    strided = strided.replace(
        "{from: img, to: c2, op: {type: conv2d, kernel: 1}}",
        "{from: img, to: c2, op: {type: conv2d, kernel: 1, stride: 2}}",
    )
    strided = strided.replace("kernel: 2}}", "kernel: 1}}").replace("width: 36", "width: 36")
    s2 = {s.id: s for s in enumerate_sites(dagrow.load_spec(strided))}
    assert not s2["widen:c1"].supported and "stride 1 and padding (k - 1) / 2" in s2["widen:c1"].reason


def test_conv_statistics_match_brute_force():
    spec, model, x, y = setup()
    ref = Ref(spec, model.state_dict(), x, y)
    sites = _supported(spec)
    stats = measure(model, [(x, y)], "mse", sites=sites)
    assert stats.loss == pytest.approx(ref.loss, rel=1e-12)
    from dagrow.graph import analyze
    from dagrow.sites import linear_sources

    sg = analyze(spec)
    for s in sites:
        for w in s.targets:
            bw = linear_sources(sg, w)
            BU, BW, G = ref.B(s.sources, w), ref.B(bw, w), ref.grad_rows[w]
            n = ref.n
            torch.testing.assert_close(stats.moment(s.sources, s.sources), BU.T @ BU / n, **TOL)
            torch.testing.assert_close(stats.moment(s.sources, bw), BU.T @ BW / n, **TOL)
            torch.testing.assert_close(stats.grad_moment(s.sources, w), BU.T @ G / n, **TOL)
            torch.testing.assert_close(stats.grad_moment(bw, w), BW.T @ G / n, **TOL)
            torch.testing.assert_close(stats.G(w), G.T @ G / n, **TOL)


def _brute_site(ref: Ref, spec, site):
    """dW*, d, Psi per target, and the singular values of S_U^{-1/2} N_UW, from explicit rows."""
    from dagrow.graph import analyze
    from dagrow.sites import linear_sources

    sg, n = analyze(spec), ref.n
    BU = ref.B(site.sources, site.targets[0])
    S_U = BU.T @ BU / n
    Ns, d, psi, vperps = [], 0.0, 0.0, {}
    for w in site.targets:
        BW, G = ref.B(linear_sources(sg, w), w), ref.grad_rows[w]
        dW = torch.linalg.lstsq(BW, G, driver="gelsd").solution.T  # best joint change, by least squares
        vperp = G - BW @ dW.T
        vperps[w] = vperp
        d += float((G * (BW @ dW.T)).sum()) / n
        psi += float(vperp.pow(2).sum()) / n
        Ns.append(-BU.T @ vperp / n)
    N = torch.cat(Ns, 1)
    e, Q = torch.linalg.eigh(S_U)
    keep = e > 1e-10 * e.max()
    inv_sqrt = (Q[:, keep] * e[keep].rsqrt()) @ Q[:, keep].T
    lam = torch.linalg.svdvals(inv_sqrt @ N)
    return BU, d, psi, lam, vperps


@pytest.mark.parametrize(
    "name, site_id",
    [("cnn", "widen:c1"), ("cnn", "node:img->c2"), ("cnn", "node:c1->r"), ("cnn", "edge:img->r")]
    + [("cnn", "edge:c1->r"), ("flat", "widen:c2"), ("flat", "widen:c1"), ("pool", "widen:c1")]
    + [("pool", "widen:c2")],
)
def test_conv_proposals_match_brute_force(name, site_id):
    spec, model, x, y = setup(SPECS[name], n=SAMPLES[name], seed=1)
    ref = Ref(spec, model.state_dict(), x, y)
    site = find_site(spec, site_id)
    stats = measure(model, [(x, y)], "mse", sites=[site])
    p = propose(stats, site, "tiny", 2, weights=model.state_dict())
    _, d, psi, lam, _ = _brute_site(ref, spec, site)
    assert p.d == pytest.approx(d, rel=1e-8)
    assert p.bottleneck == pytest.approx(psi, rel=1e-8, abs=1e-12)
    k = p.lambdas.numel()
    assert k >= 1
    torch.testing.assert_close(p.lambdas, lam[:k], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(
    "name, site_id",
    [("cnn", "widen:c1"), ("cnn", "node:c1->r"), ("cnn", "node:img->c2"), ("flat", "widen:c2")],
)
def test_conv_bottleneck_theorem_with_identity_activation(name, site_id):
    """New channels (identity activation, fan-out at the kernel's centre, or the same at every position
    through a flatten) move the targets' pre-activations by the rows B_U alpha^T omega, and lower the
    bottleneck by sum lambda_k^2."""
    text = SPECS[name].replace("activation: tanh", "activation: identity")
    spec, model, x, y = setup(text, n=SAMPLES[name], seed=2)
    ref = Ref(spec, model.state_dict(), x, y)
    site = find_site(spec, site_id)
    stats = measure(model, [(x, y)], "mse", sites=[site])
    K = 2
    p = propose(stats, site, "tiny", K, weights=model.state_dict())
    assert p.neurons == K
    BU, _, psi, lam, vperps = _brute_site(ref, spec, site)
    spec2, w2 = replay(spec, model.state_dict(), proposal_actions(p, spec, 1.0, update=False))
    pre1, _, _ = ref_forward(spec, {k: v.double() for k, v in model.state_dict().items()}, x)
    pre2, _, _ = ref_forward(spec2, w2, x)
    after = 0.0
    for w in site.targets:
        moved = pre2[w] - pre1[w]
        moved = _image_rows(moved) if moved.dim() == 4 else moved
        torch.testing.assert_close(moved, BU @ (p.fan_out[w] @ p.fan_in).T, **TOL)
        after += float((vperps[w] + moved).pow(2).sum()) / ref.n
    assert after == pytest.approx(psi - float(lam[:K].pow(2).sum()), rel=1e-8, abs=1e-12)
    assert p.sum_lambda_sq == pytest.approx(float(lam[:K].pow(2).sum()), rel=1e-8)
    torch.testing.assert_close(
        dagrow.compile(spec2, w2, dtype=torch.float64)(x), ref_forward(spec2, w2, x)[2], rtol=0, atol=1e-12
    )


def _loss(spec, weights, x, y) -> float:
    with torch.no_grad():
        return float(F.mse_loss(dagrow.compile(spec, weights, dtype=torch.float64)(x), y))


@pytest.mark.parametrize(
    "name, site_id",
    [("cnn", "widen:c1"), ("cnn", "node:img->c2"), ("cnn", "node:c1->r"), ("cnn", "edge:img->r")]
    + [("flat", "widen:c2"), ("pool", "widen:c1"), ("pool", "widen:c2")],
)
def test_conv_first_order_prediction_matches_finite_differences(name, site_id):
    spec, model, x, y = setup(SPECS[name], n=SAMPLES[name], seed=3)
    site = find_site(spec, site_id)
    stats = measure(model, [(x, y)], "mse", sites=[site])
    p = propose(stats, site, "tiny", 2, weights=model.state_dict())
    l0 = _loss(spec, model.state_dict(), x, y)
    gamma = 1e-6
    spec2, w2 = replay(spec, model.state_dict(), proposal_actions(p, spec, gamma))
    slope = (l0 - _loss(spec2, w2, x, y)) / gamma
    assert slope == pytest.approx(p.first_order_improvement, rel=1e-4)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("init", sorted(FUNCTION_PRESERVING))
def test_conv_function_preserving_inits(init, name):
    spec, model, x, y = setup(SPECS[name], n=4, seed=4)
    sites = _supported(spec)
    stats = measure(model, [(x, y)], "mse", sites=sites)
    before = model(x)
    for p in propose_all(stats, sites, init, 2, weights=model.state_dict()):
        if p.skipped or p.site.kind == "edge":
            continue
        for gamma in (0.7,):
            spec2, w2 = replay(spec, model.state_dict(), proposal_actions(p, spec, gamma, update=False))
            after = dagrow.compile(spec2, w2, dtype=torch.float64)(x)
            assert float((after - before).abs().max()) < 1e-12, (init, p.site.id)


@pytest.mark.parametrize("pair", [("img", "c1"), ("c1", "c2"), ("img", "c2"), ("c2", "r")])
@pytest.mark.parametrize("kernel", [1, 3])
def test_deepened_conv_edge_is_an_identity_block(pair, kernel):
    spec, model, x, _ = setup(n=3, seed=5)
    u, w = pair
    action = DeepenEdge(u, w, "m", {"name": "prelu", "init": 1.0}, kernel=kernel)
    spec2, w2 = action.apply(spec, model.state_dict())
    assert spec2.edge(u, "m").op.type == "conv2d" and spec2.edge("m", w).op == spec.edge(u, w).op
    out = dagrow.compile(spec2, w2, dtype=torch.float64)(x)
    assert float((out - model(x)).abs().max()) < 1e-12


def test_streamed_and_chunked_statistics_equal_those_of_one_batch():
    spec, model, x, y = setup(n=9, seed=6)
    sites = _supported(spec)
    whole = measure(model, [(x, y)], "mse", sites=sites)
    streamed = measure(model, [(x[:4], y[:4]), (x[4:], y[4:])], "mse", sites=sites)
    from dagrow.stats import Accumulator, requirements

    acc = Accumulator(model, requirements(model, sites), torch.float64, memory_budget=1)  # one sample a chunk
    acc.add((x,), y, dagrow.stats.loss_function("mse"), 0)
    chunked = acc.result()
    for other in (streamed, chunked):
        assert other.n == whole.n
        for key, value in whole.pair_sums.items():
            torch.testing.assert_close(other.pair_sums[key], value, rtol=1e-12, atol=1e-12)
        for key, value in whole.grad_sums.items():
            torch.testing.assert_close(other.grad_sums[key], value, rtol=1e-12, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(
    k1=st.sampled_from([1, 3, 5]),
    k2=st.sampled_from([1, 3]),
    c=st.integers(1, 3),
    size=st.integers(3, 6),
    skip=st.booleans(),
    seed=st.integers(0, 100),
)
def test_random_conv_nets_match_brute_force(k1, k2, c, size, skip, seed):
    """Hypothesis-generated conv DAGs (kernels, channels, grid, an optional residual join): every
    supported site's S, M and lambdas equal those of the explicit rows."""
    edges = [
        f"{{from: img, to: a, op: {{type: conv2d, kernel: {k1}, padding: {(k1 - 1) // 2}}}}}",
        f"{{from: a, to: b, op: {{type: conv2d, kernel: {k2}, padding: {(k2 - 1) // 2}}}}}",
        "{from: b, to: flat, op: flatten}",
        "{from: flat, to: out}",
    ]
    if skip:
        edges.append("{from: img, to: b, op: {type: conv2d, kernel: 1}}")
    text = f"""
version: 1
inputs: {{img: {{shape: [{c}, {size}, {size}]}}}}
nodes:
  a: {{channels: {c + 1}, activation: tanh}}
  b: {{channels: 2, activation: tanh, bias: false}}
  flat: {{width: {2 * size * size}, bias: false}}
  out: {{width: 2}}
edges: [{", ".join(edges)}]
outputs: [out]
growth: {{new_nodes: all, new_edges: all, new_node_activation: tanh}}
"""
    spec, model, x, y = setup(text, n=3, seed=seed)
    ref = Ref(spec, model.state_dict(), x, y)
    sites = _supported(spec)
    assert any(s.id == "widen:a" for s in sites)
    stats = measure(model, [(x, y)], "mse", sites=sites)
    for s in sites:
        w = s.targets[0]
        BU, G = ref.B(s.sources, w), ref.grad_rows[w]
        torch.testing.assert_close(stats.moment(s.sources, s.sources), BU.T @ BU / ref.n, **TOL)
        torch.testing.assert_close(stats.grad_moment(s.sources, w), BU.T @ G / ref.n, **TOL)
        p = propose(stats, s, "tiny", 1, weights=model.state_dict())
        lam = _brute_site(ref, spec, s)[3]
        k = p.lambdas.numel()
        torch.testing.assert_close(p.lambdas, lam[:k], rtol=1e-7, atol=1e-10)
    assert math.isfinite(stats.loss)


@pytest.mark.parametrize("weight_grads", [True, False])
def test_recorded_conv_statistics_equal_a_separate_pass(weight_grads):
    spec, model, x, y = setup(n=5, seed=7)
    sites = _supported(spec)
    measured = measure(model, [(x, y)], "mse", sites=sites)
    from dagrow.recorder import Recorder

    with Recorder(model, sites=sites, weight_grads=weight_grads) as rec:
        # with weight_grads, the M blocks of the conv edges and image biases are read from their gradients
        read = {w for (s, w) in rec._edge_params() if "#" in s}
        assert bool(read) == weight_grads
        loss = F.mse_loss(model(x), y)
        rec.backward(loss)
    recorded = rec.result()
    for key, value in measured.pair_sums.items():
        torch.testing.assert_close(recorded.pair_sums[key], value, rtol=1e-12, atol=1e-12)
    for key, value in measured.grad_sums.items():
        torch.testing.assert_close(recorded.grad_sums[key], value, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_cuda_conv_statistics_equal_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    spec, model, x, y = setup(n=64, seed=8)
    sites = _supported(spec)
    cpu = measure(model, [(x, y)], "mse", sites=sites)
    gpu_model = dagrow.compile(spec, model.state_dict(), dtype=torch.float64, device="cuda")
    gpu = measure(gpu_model, [(x.cuda(), y.cuda())], "mse", sites=sites)
    for store in ("pair_sums", "grad_sums", "g_sums"):
        for key, value in getattr(cpu, store).items():
            torch.testing.assert_close(getattr(gpu, store)[key].cpu(), value, rtol=1e-10, atol=1e-12)


NORMED = """
version: 1
name: normed
inputs: {img: {shape: [2, 5, 5]}}
nodes:
  c1: {channels: 3, activation: tanh, norm: batch_norm}
  c2: {channels: 3, activation: tanh, norm: batch_norm}
  f: {width: 75, bias: false}
  out: {width: 3}
edges:
  - {from: img, to: c1, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c1, to: c2, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c2, to: f, op: flatten}
  - {from: f, to: out}
outputs: [out]
growth: {new_nodes: all, new_edges: all, new_node_activation: tanh}
"""


def _normed(train: bool, seed: int = 9):
    spec, model, x, y = setup(NORMED, n=30, seed=seed)
    with torch.no_grad():  # running statistics away from their defaults
        model.train()
        model(x * 1.5 + 0.3)
    model.train(train)
    return spec, model, x, y


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("init", sorted(FUNCTION_PRESERVING))
def test_batch_normed_conv_nodes_keep_their_function(init, train):
    spec, model, x, y = _normed(train)
    sites = _supported(spec, ("widen",))
    assert {s.id for s in sites} == {"widen:c1", "widen:c2"}
    stats = measure(model, [(x, y)], "mse", sites=sites)
    with torch.no_grad():
        before = model(x)
    for p in propose_all(stats, sites, init, 2, weights=model.state_dict()):
        spec2, w2 = replay(spec, model.state_dict(), proposal_actions(p, spec, 0.8, update=False))
        grown = dagrow.compile(spec2, w2, dtype=torch.float64).train(train)
        with torch.no_grad():
            assert float((grown(x) - before).abs().max()) < 1e-12, (init, p.site.id)


@pytest.mark.parametrize("site_id", ["widen:c1", "widen:c2", "node:img->c2", "edge:img->c2"])
def test_first_order_prediction_with_batch_norm_in_the_path(site_id):
    """Eval mode (running statistics): the statistics' gradients go through the norm, and the grown
    channels' norm is the identity, so the first-order gain is the loss's true slope."""
    spec, model, x, y = _normed(False, seed=10)
    site = find_site(spec, site_id)
    stats = measure(model, [(x, y)], "mse", sites=[site])
    p = propose(stats, site, "tiny", 2, weights=model.state_dict())
    gamma = 1e-6
    spec2, w2 = replay(spec, model.state_dict(), proposal_actions(p, spec, gamma))
    with torch.no_grad():
        l0 = float(F.mse_loss(model(x), y))
        grown = dagrow.compile(spec2, w2, dtype=torch.float64).eval()
        slope = (l0 - float(F.mse_loss(grown(x), y))) / gamma
    assert slope == pytest.approx(p.first_order_improvement, rel=1e-4)


@pytest.mark.parametrize("name, site_id", [("cnn", "widen:c1"), ("pool", "widen:c2"), ("cnn", "node:c1->r")])
def test_exact_first_order_gain_of_relu_channels(name, site_id):
    """ReLU new channels (a kink at 0): the planner's exact figure (one shared forward, per-sample
    gradients on the image grid, pooled/summed like the channels) is the loss's true slope."""
    from dagrow.growth.first_order import exact_first_order

    text = (
        SPECS[name]
        .replace("activation: tanh", "activation: relu")
        .replace("new_node_activation: relu", "new_node_activation: relu")
    )
    spec, model, x, y = setup(text, n=SAMPLES[name], seed=11)
    site = find_site(spec, site_id)
    stats = measure(model, [(x, y)], "mse", sites=[site])
    (p,) = exact_first_order(
        [propose(stats, site, "tiny", 2, weights=model.state_dict())], model, (x, y), "mse"
    )
    assert p.first_order_exact
    gamma = 1e-6
    spec2, w2 = replay(spec, model.state_dict(), proposal_actions(p, spec, gamma))
    slope = (_loss(spec, model.state_dict(), x, y) - _loss(spec2, w2, x, y)) / gamma
    assert slope == pytest.approx(p.first_order_improvement, rel=1e-4)


def test_deepening_a_listed_conv_edge_consumes_it_and_keeps_the_function():
    spec = dagrow.load_spec("specs/resnet_digits.yaml")  # growth.deepen lists a1->b1 and a2->b2
    model = dagrow.compile(spec, dtype=torch.float64, seed=3).eval()
    spec2, w2 = DeepenEdge("a1", "b1", "m", kernel=3).apply(spec, model.state_dict())
    assert [tuple(p) for p in spec2.growth.deepen] == [("a2", "b2")]
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        grown = dagrow.compile(spec2, w2, dtype=torch.float64).eval()
        assert float((grown(x) - model(x)).abs().max()) < 1e-12
