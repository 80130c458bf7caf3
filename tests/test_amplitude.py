"""The amplitude factor: the first-order prediction against finite differences, the 1-D line search,
and gamma* never making the loss worse (DESIGN.md invariant 5)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from bruteforce import HAND_WRITTEN, reference, setup, with_activation

from dagrow.growth.actions import proposal_actions
from dagrow.growth.amplitude import GrownFamily, amplitude_factor, line_search
from dagrow.growth.first_order import exact_first_order
from dagrow.growth.proposals import FUNCTION_PRESERVING, propose
from dagrow.growth.shared_forward import SharedForward, proposal_outputs
from dagrow.planner import make_strategy
from dagrow.rewrite import replay
from dagrow.sites import enumerate_sites, find_site
from dagrow.stats import measure

GAMMA = 1e-6  # float64: the cancellation error is ~1e-16 / 1e-6, the curvature term ~1e-6


def grown_setting(name: str, activation: str, n: int = 64, seed: int = 0):
    spec, model, xs, y = setup(with_activation(HAND_WRITTEN[name], activation), n=n, seed=seed)
    stats = measure(model, [(tuple(xs), y)])
    return spec, model, xs, y, stats


def finite_difference(family, xs, y, base: float, gamma: float = GAMMA) -> float:
    with torch.no_grad():
        return (base - float(F.mse_loss(family(gamma, *xs), y))) / gamma


# the activations of the issue-13 first-order tests: kinks at 0 (relu, leaky_relu, relu_grad1, prelu,
# selu) and smooth ones (tanh, gelu, identity)
FIRST_ORDER = ["relu", "leaky_relu", "relu_grad1", "prelu", "selu", "tanh", "gelu", "identity"]


def exact_proposals(model, xs, y, proposals):
    return exact_first_order(proposals, model, (tuple(xs), y))


def kinked_setting(name: str, activation: str, n: int = 64, seed: int = 0):
    """``grown_setting`` with a trained-looking prelu: its learnable slope moved away from the spec's
    init, so that a widened node's neurons must use the module's slope, a new node's the spec's."""
    spec, model, xs, y, stats = grown_setting(name, activation, n, seed)
    if activation == "prelu":
        with torch.no_grad():
            for k, t in model.state_dict().items():
                if k.endswith("activation.weight"):
                    t.fill_(0.6)
        stats = measure(model, [(tuple(xs), y)])
    return spec, model, xs, y, stats


@pytest.mark.parametrize("activation", FIRST_ORDER)
@pytest.mark.parametrize("name", ["mlp", "skip", "two_inputs"])
def test_first_order_prediction_matches_finite_differences(name, activation):
    """The exact first-order gain (the one-sided derivative where the activation has a kink) against
    (L(0) - L(gamma)) / gamma of the model rewritten by the proposal's actions, on every widen, node and
    edge site and every init."""
    spec, model, xs, y, stats = kinked_setting(name, activation)
    weights = model.state_dict()
    with torch.no_grad():
        base = float(F.mse_loss(model(*xs), y))
    kinds = set()
    for site in enumerate_sites(spec, include_unsupported=False):
        # every init on the mlp; the other nets (slower to rewrite) with TINY, whose neurons move the loss
        # (with identity TINY has no direction at their widen and node sites: every init there too)
        full = site.kind != "edge" and (name == "mlp" or activation == "identity")
        inits = ["tiny", *sorted(FUNCTION_PRESERVING)] if full else ["tiny"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gradmax on relu: zero fan-in neurons will not learn
            proposals = [propose(stats, site, init, 2, weights=weights) for init in inits]
        for init, p in zip(inits, exact_proposals(model, xs, y, proposals), strict=True):
            if p.neurons == 0 and p.edge_weight is None:
                continue
            assert p.first_order_exact
            fd = finite_difference(GrownFamily(model, p), xs, y, base)
            assert abs(fd - p.first_order_improvement) <= 1e-3 * abs(p.first_order_improvement) + 1e-9, (
                site.id,
                init,
                fd,
                p.first_order_improvement,
            )
            kinds.add(site.kind)
    assert kinds == {"widen", "node", "edge"}


@pytest.mark.parametrize("activation", FIRST_ORDER)
def test_first_order_prediction_without_the_update_is_the_neurons_share(activation):
    """update=False removes d: what is left is the new neurons' (or edge's) own first-order gain. For
    a smooth activation and TINY on features orthogonal to the existing ones it is sigma'(0) sum
    lambda_k^2 (DESIGN.md); with a kink it is -(1/n) sum_i g^T Omega D(A^T b_U) and can have any sign."""
    spec, model, xs, y, stats = kinked_setting("mlp", activation)
    with torch.no_grad():
        base = float(F.mse_loss(model(*xs), y))
    shares = []
    for site_id in ("widen:h1", "widen:h2", "node:x->out", "edge:h1->out"):
        p = propose(stats, find_site(spec, site_id), "tiny", 2, weights=model.state_dict())
        (p,) = exact_proposals(model, xs, y, [p])
        fd = finite_difference(GrownFamily(model, p, update=False), xs, y, base)
        share = p.first_order_improvement - p.d
        assert fd == pytest.approx(share, rel=1e-3, abs=1e-9), site_id
        if activation in ("tanh", "identity"):
            assert share >= -1e-12, site_id  # as measured before issue 13 (the overlap can make it < 0)
        shares.append(share)
    # with identity activations h2 = W h1 + c spans h1, so widen:h2 and edge:h1->out see nothing new
    assert sum(abs(s) > 1e-6 for s in shares) >= (4 if activation == "tanh" else 2)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "prelu"])
@pytest.mark.parametrize("name", ["mlp", "skip"])
def test_kinked_neurons_gain_the_inner_product_of_the_goal_and_their_features(name, activation):
    """relu, leaky_relu and prelu are positively homogeneous: sqrt(gamma) omega sigma(sqrt(gamma) alpha^T
    b) = gamma omega sigma(alpha^T b), exactly linear in gamma but not sigma'(0) alpha^T b. The
    neurons' first-order gain is then -(1/n) sum_i sum_w g_w(x_i)^T omega_w sigma(alpha^T B_U(x_i)),
    computed here sample by sample by the brute-force reference (its own forward and per-sample
    autograd); ``propose`` alone only has the moment with the mean slope and says so."""
    spec, model, xs, y, stats = kinked_setting(name, activation)
    ref = reference(spec, model.state_dict(), xs, y)
    checked = 0
    for site in enumerate_sites(spec, include_unsupported=False):
        if site.kind == "edge":
            continue
        p = propose(stats, site, "tiny", 2, weights=model.state_dict())
        if p.neurons == 0:
            continue
        assert not p.first_order_exact and any("kink" in n for n in p.notes)
        slope = 0.6 if site.kind == "widen" and activation == "prelu" else p.slopes[0]
        z = ref.B(site.sources) @ p.fan_in.T
        features = torch.where(z > 0, z, slope * z)  # [n, K]
        gain = -sum(float((ref.grad[w] * (features @ p.fan_out[w].T)).sum()) for w in site.targets) / ref.n
        (q,) = exact_proposals(model, xs, y, [p])
        assert abs(gain) > 1e-6 and q.first_order_improvement == pytest.approx(p.d + gain, rel=1e-9), site.id
        assert q.slopes == (slope, 1.0) and not any("kink" in n for n in q.notes)
        checked += 1
    assert checked >= 2


def test_a_relu_new_node_in_a_tanh_network_gets_its_true_first_order_gain():
    """Issue 13: with autograd's relu'(0) = 0 a ReLU new node inside a tanh network was credited with
    nothing beyond d, although its neurons move the loss to first order, sometimes upwards. Over a few
    seeds every node site's share is non-zero and equal to the finite difference, and some raise the
    loss; the planner reports the exact figure (beside sum_lambda_sq) for the site it chose."""
    text = HAND_WRITTEN["mlp"].replace("new_node_activation: tanh", "new_node_activation: relu")
    shares = []
    for seed in range(4):
        spec, model, xs, y = setup(text, n=64, seed=seed)
        stats = measure(model, [(tuple(xs), y)])
        with torch.no_grad():
            base = float(F.mse_loss(model(*xs), y))
        for site in enumerate_sites(spec, include_unsupported=False):
            if site.kind != "node":
                continue
            p = propose(stats, site, "tiny", 1, weights=model.state_dict())
            if p.neurons == 0:
                continue
            (q,) = exact_proposals(model, xs, y, [p])
            share = q.first_order_improvement - q.d
            fd = finite_difference(GrownFamily(model, q, update=False), xs, y, base)
            assert abs(share) > 1e-5 and fd == pytest.approx(share, rel=1e-3), (seed, site.id)
            shares.append(share)
        if seed == 0:
            strategy = make_strategy("amplitude_factor", max_candidates=100)
            plan = strategy.plan(model, (xs[0], y), "mse", enumerate_sites(spec, include_unsupported=False))
            chosen = propose(stats, find_site(spec, plan.site), "tiny", 1, weights=model.state_dict())
            (chosen,) = exact_proposals(model, xs, y, [chosen])
            assert plan.figures["first_order_exact"] is True
            assert plan.figures["first_order_improvement"] == pytest.approx(chosen.first_order_improvement)
            assert plan.figures["sum_lambda_sq"] == pytest.approx(chosen.sum_lambda_sq)
    assert len(shares) >= 8 and min(shares) < 0 < max(shares)


def test_a_new_node_on_a_fresh_pair_gains_sum_lambda_sq():
    """node:x->out reads features (x, 1) that out does not see: C B_U is then orthogonal to what
    dW* B_out explains and the first-order gain is exactly d + sigma'(0) sum lambda_k^2."""
    spec, model, xs, y, stats = grown_setting("mlp", "tanh")
    p = propose(stats, find_site(spec, "node:x->out"), "tiny", 2, weights=model.state_dict())
    assert p.neurons == 2
    # the overlap term -sigma'(0) <dW* B_W, Omega A^T B_U> is not zero in general, so only bound it
    assert p.first_order_improvement == pytest.approx(p.d + p.sum_lambda_sq, rel=0.5)


# --------------------------------------------------------------------------------------------------
# line search
# --------------------------------------------------------------------------------------------------


def test_line_search_finds_an_interior_minimum():
    calls = []

    def f(g):
        calls.append(g)
        return (g - 0.37) ** 2 + 1.0

    gamma, value, evals = line_search(f)
    assert gamma == pytest.approx(0.37, abs=2e-3)
    assert value == pytest.approx(1.0, abs=1e-5) and value == f(gamma)
    assert evals == len(calls) - 1 <= 15  # one call above is ours
    assert len(set(calls[:-1])) == evals  # never twice at one gamma


def test_line_search_returns_zero_when_nothing_helps():
    gamma, value, evals = line_search(lambda g: (g + 1.0) ** 2)
    assert gamma == 0.0 and value == 1.0
    assert evals == 8  # 0, then the grid from 1 down to 2^-12, and nothing more


def test_line_search_stops_at_the_grid_end():
    gamma, value, evals = line_search(lambda g: (g - 1000.0) ** 2)
    assert gamma == 2.0**6 and value == (64 - 1000.0) ** 2
    assert evals == 6  # 0, 1, 4, 16, 64 and one point just below 64: still falling, no refinement
    gamma, _, _ = line_search(lambda g: (g - 1000.0) ** 2, hi_exp=10)
    assert gamma == pytest.approx(1000.0, rel=1e-2)


def test_line_search_uses_a_known_value_at_zero():
    calls = []

    def f(g):
        calls.append(g)
        return (g - 2.0) ** 2

    gamma, value, evals = line_search(f, f0=4.0)
    assert 0.0 not in calls and evals == len(calls)
    assert gamma == pytest.approx(2.0, rel=1e-2)
    gamma, value, _ = line_search(lambda g: g + 1.0, f0=0.5)  # the known f(0) is the best
    assert gamma == 0.0 and value == 0.5


def test_line_search_treats_non_finite_values_as_infinite():
    gamma, value, _ = line_search(lambda g: math.nan if g > 0.5 else (g - 2.0) ** 2)
    assert 0.25 <= gamma <= 0.5 and math.isfinite(value)
    gamma, value, _ = line_search(lambda g: math.inf if g > 0 else 3.0)
    assert gamma == 0.0 and value == 3.0


def test_line_search_with_a_small_minimum_uses_the_fine_grid():
    gamma, _, _ = line_search(lambda g: (g - 3e-4) ** 2)
    assert gamma == pytest.approx(3e-4, rel=2e-2)


# --------------------------------------------------------------------------------------------------
# amplitude factor
# --------------------------------------------------------------------------------------------------


def _negated(p):
    """The same proposal pointing uphill: minus dW*, minus the fan-out (or edge weight)."""
    updates = {w: dataclasses.replace(u, delta=-u.delta) for w, u in p.updates.items()}
    fan_out = {w: -t for w, t in p.fan_out.items()}
    edge = None if p.edge_weight is None else -p.edge_weight
    return dataclasses.replace(
        p,
        updates=updates,
        fan_out=fan_out,
        edge_weight=edge,
        first_order_improvement=-p.first_order_improvement,
    )


@pytest.mark.parametrize("activation", ["tanh", "identity"])
@pytest.mark.parametrize("name", ["mlp", "skip"])
def test_amplitude_factor_never_raises_the_loss(name, activation):
    spec, model, xs, y, stats = grown_setting(name, activation, n=48, seed=2)
    batch = (tuple(xs), y)
    with torch.no_grad():
        base = float(F.mse_loss(model(*xs), y))
    for site in enumerate_sites(spec, include_unsupported=False):
        for init in ["tiny"] if site.kind == "edge" else ["tiny", "gradmax"]:
            p = propose(stats, site, init, 2, weights=model.state_dict())
            if p.neurons == 0 and p.edge_weight is None:
                continue
            for proposal in (p, _negated(p)):
                for update in (True, False):
                    res, family = amplitude_factor(model, proposal, batch, update=update)
                    assert res.loss_before == pytest.approx(base, rel=1e-12)
                    assert res.loss_after <= res.loss_before, (site.id, init, update)
                    assert res.gamma >= 0 and res.delta_l >= 0
                    assert res.predicted_decrease == res.gamma * proposal.first_order_improvement
                    with torch.no_grad():
                        again = float(F.mse_loss(family(res.gamma, *xs), y))
                    assert again == pytest.approx(res.loss_after, rel=1e-12, abs=1e-15)
            res, _ = amplitude_factor(model, p, batch)
            if p.first_order_improvement > 1e-6:
                assert res.gamma > 0 and res.delta_l > 0, (site.id, init)


def test_uphill_proposal_on_a_convex_direction_gives_gamma_zero():
    """A new edge into the identity output under MSE moves the loss along a convex parabola in gamma:
    pointed uphill, the best amplitude is 0 and the network is kept as it is."""
    spec, model, xs, y, stats = grown_setting("mlp", "tanh")
    p = propose(stats, find_site(spec, "edge:x->out"), "tiny", weights=model.state_dict())
    res, _ = amplitude_factor(model, _negated(p), (xs[0], y), update=False)
    assert res.gamma == 0.0 and res.loss_after == res.loss_before and res.delta_l == 0.0


def test_materialised_model_equals_the_family_and_the_replayed_actions():
    spec, model, xs, y, stats = grown_setting("skip", "tanh")
    p = propose(stats, find_site(spec, "widen:h2"), "tiny", 2, weights=model.state_dict())
    res, family = amplitude_factor(model, p, (xs[0], y))
    grown = family.materialise(res.gamma)
    assert grown.spec == family.spec
    with torch.no_grad():
        assert torch.equal(grown(xs[0]), family(res.gamma, xs[0]))
        spec2, w2 = replay(spec, model.state_dict(), proposal_actions(p, spec, res.gamma))
        assert spec2 == family.spec
        from dagrow import compile as compile_spec

        replayed = compile_spec(spec2, w2, dtype=torch.float64)(xs[0])
        assert (replayed - grown(xs[0])).abs().max() <= 1e-12
        assert float(F.mse_loss(grown(xs[0]), y)) == pytest.approx(res.loss_after, rel=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "prelu", "relu"])
@pytest.mark.parametrize("name", ["mlp", "skip", "two_inputs"])
def test_the_shared_forward_equals_the_grown_family(name, activation):
    """The line search's shortcut (cached a_w(0) plus the proposal's change, then only what lies
    downstream of the targets) computes the grown model's outputs, for every site kind, with and
    without dW*; gamma = 0 gives the model's own outputs bit for bit."""
    spec, model, xs, y, stats = grown_setting(name, activation, n=32, seed=3)
    forward = SharedForward(model, xs)
    kinds = set()
    for site in enumerate_sites(spec, include_unsupported=False):
        p = propose(stats, site, "tiny", 2, weights=model.state_dict())
        if p.neurons == 0 and p.edge_weight is None:
            continue
        kinds.add(site.kind)
        for update in (True, False):
            family = GrownFamily(model, p, update=update)
            outputs = proposal_outputs(forward, p, update=update)
            with torch.no_grad():
                model_out = model(*xs)
                for gamma in (0.0, 1e-3, 0.7, 5.0):
                    got, want = outputs(gamma), family(gamma, *xs)
                    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
                    for g, w in zip(got, want, strict=True):
                        scale = float(w.abs().max()) + 1.0
                        assert (g - w).abs().max() <= 1e-12 * scale, (site.id, update, gamma)
                at_zero = outputs(0.0)
                at_zero, model_out = (
                    (at_zero, model_out) if isinstance(model_out, tuple) else ((at_zero,), (model_out,))
                )
                assert all(torch.equal(a, b) for a, b in zip(at_zero, model_out, strict=True))
    assert kinds == {"widen", "node", "edge"}


def test_the_shared_forward_recomputes_only_what_lies_downstream():
    spec, model, xs, y, stats = grown_setting("skip", "tanh", n=16)
    forward = SharedForward(model, xs)
    names = {n.name for n, _, _ in forward.downstream(["out"]).steps}
    assert names == {"a_out", "out"}
    recomputed = {n.name for n, fn, _ in forward.downstream(["h1"]).steps if fn is not None}
    assert "a_h1" not in recomputed and "h1" in recomputed  # a_h1 comes from the cache
