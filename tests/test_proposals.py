"""Closed-form proposals against brute force from the explicit matrices (DESIGN.md invariants 2, 4, 5).

The reference builds B_U, B_w and the per-sample gradients g_w sample by sample (tests/bruteforce.py),
then: dW*_w by least squares (rcond matching the eigenvalue threshold of S: a relative 1e-10 on
eigenvalues is 1e-5 on singular values), Vperp, d, Psi, N = -(1/n) B_U^T Vperp_W, and the SVD of
S_U^{-1/2} N with S_U^{-1/2} from eigh.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pytest
import torch
from bruteforce import HAND_WRITTEN, forward, linear_sources, random_dags, reference, setup, with_activation
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import dagrow
from dagrow.growth.actions import proposal_actions
from dagrow.growth.amplitude import GrownFamily
from dagrow.growth.proposals import INITS, ProposalSettings, propose
from dagrow.rewrite import replay
from dagrow.sites import enumerate_sites, find_site
from dagrow.stats import measure

REL = ProposalSettings().numerical_threshold
STAT = ProposalSettings().statistical_threshold
TOL = dict(rtol=1e-7, atol=1e-9)
PRESERVING = ("gradmax", "north", "random", "random_fan_out", "mirrored")


@dataclass
class Brute:
    dW: dict[str, torch.Tensor]
    fit: dict[str, torch.Tensor]  # B_w dW*_w^T per sample
    d: dict[str, float]
    psi: dict[str, float]
    vperp: torch.Tensor  # [n, sum widths]
    BU: torch.Tensor
    S: torch.Tensor
    N: torch.Tensor
    S_is: torch.Tensor
    lam: torch.Tensor
    u: torch.Tensor
    vh: torch.Tensor
    M: torch.Tensor  # M_UW [dim U, sum widths]
    ill_posed: bool  # some S has an eigenvalue between "exactly singular" and "well conditioned"
    coef: dict[str, float]  # natural size of dW*_w: ||S_w^+1/2|| sqrt(mean ||g_w||^2)
    kappa: float  # the largest condition number (over kept eigenvalues) of S_U and the S_w

    @property
    def eps(self) -> float:
        """Relative accuracy to expect: the closed forms solve normal equations (error ~ cond(S) eps)."""
        return 1e-14 * self.kappa

    def C(self, K: int) -> torch.Tensor:
        """sum_{k<K} omega_k alpha_k^T = V_K diag(lam) U_K^T S^-1/2, [sum widths, dim U]."""
        return (self.vh[:K].T * self.lam[:K]) @ (self.S_is @ self.u[:, :K]).T

    @property
    def bottleneck(self) -> float:
        return sum(self.psi.values())

    @property
    def kept(self) -> torch.Tensor:
        return self.lam[self.lam.pow(2) > STAT * self.bottleneck]


def ill_conditioned(S: torch.Tensor) -> bool:
    """An eigenvalue ratio in (1e-13, 1e-8): the normal equations (all that statistics allow) lose up to
    cond(S) * eps there, and the threshold 1e-10 may fall on either side of it. Exact singularity
    (ratios at round-off, e.g. collinear features) stays in the tests."""
    e = torch.linalg.eigvalsh(S)
    r = e / e.max() if float(e.max()) > 0 else e
    return bool(((r > 1e-13) & (r < 1e-8)).any())


def condition(S: torch.Tensor) -> float:
    e = torch.linalg.eigvalsh(S)
    kept = e[e > REL * e.max()]
    return float(kept.max() / kept.min()) if kept.numel() else 1.0


def inv_sqrt_norm(S: torch.Tensor) -> float:
    """||S^+1/2||_2 over the kept eigenvalues: converts a feature-space error into a weight-space one."""
    e = torch.linalg.eigvalsh(S)
    kept = e[e > REL * e.max()]
    return float(kept.min().rsqrt()) if kept.numel() else 0.0


def brute(ref, spec, site) -> Brute:
    n = ref.n
    dW, fit, d, psi, vps, coef = {}, {}, {}, {}, [], {}
    ill, kappa = False, 1.0
    for w in site.targets:
        Bw, g = ref.B(linear_sources(spec, w)), ref.grad[w]
        Sw = Bw.T @ Bw / n
        ill |= ill_conditioned(Sw)
        kappa = max(kappa, condition(Sw))
        sol = torch.linalg.lstsq(Bw, g, rcond=math.sqrt(REL), driver="gelsd").solution
        dW[w], fit[w] = sol.T, Bw @ sol
        d[w] = float(fit[w].pow(2).sum(1).mean())
        psi[w] = float((g - fit[w]).pow(2).sum(1).mean())
        coef[w] = inv_sqrt_norm(Sw) * math.sqrt(float(g.pow(2).sum(1).mean()))
        vps.append(g - fit[w])
    vperp = torch.cat(vps, 1)
    BU = ref.B(site.sources)
    S = BU.T @ BU / n
    N = -(BU.T @ vperp) / n
    e, Q = torch.linalg.eigh(S)
    keep = e > REL * e.max()
    S_is = Q[:, keep] @ torch.diag(e[keep].rsqrt()) @ Q[:, keep].T
    u, lam, vh = torch.linalg.svd(S_is @ N, full_matrices=False)
    M = torch.cat([BU.T @ ref.grad[w] / n for w in site.targets], 1)
    ill |= ill_conditioned(S)
    kappa = max(kappa, condition(S))
    return Brute(dW, fit, d, psi, vperp, BU, S, N, S_is, lam, u, vh, M, ill, coef, kappa)


def assert_near(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-7, scale: float = 0.0) -> None:
    """Norm-wise closeness ||a - b|| <= rel max(||b||, scale): ``scale`` is the natural size of the
    quantity, so that a result that is round-off (a cancellation to nearly zero) is judged by the
    size of what cancelled, not by its own."""
    assert a.shape == b.shape
    err, size = float((a - b).norm()), max(float(b.norm()), scale)
    assert err <= rel * size + 1e-300, (
        f"||a - b|| = {err:.3g}, ||b|| = {float(b.norm()):.3g}, scale {scale:.3g}"
    )


def fan_out_stack(p) -> torch.Tensor:
    return torch.cat([p.fan_out[w] for w in p.site.targets], 0)


def measured(text_or_spec, n=48, seed=0):
    spec, model, xs, y = setup(text_or_spec, n=n, seed=seed)
    stats = measure(model, [(tuple(xs), y)])
    return spec, model, xs, y, stats, reference(spec, model.state_dict(), xs, y)


def check_against_brute(p, b: Brute, ref, spec, requested: int) -> None:
    """Every closed form of a tiny or edge proposal equals the brute-force one."""
    for w, upd in p.updates.items():
        assert upd.sources == linear_sources(spec, w)
        Bw, gnorm = ref.B(upd.sources), float(ref.grad[w].norm())
        assert_near(
            Bw @ upd.delta.T, b.fit[w], rel=max(1e-7, b.eps), scale=gnorm
        )  # unique if S_w is singular
        assert_near(upd.delta, b.dW[w], rel=max(1e-6, b.eps), scale=b.coef[w])
        assert upd.d == pytest.approx(b.d[w], rel=1e-8, abs=1e-12)
        assert upd.bottleneck == pytest.approx(b.psi[w], rel=1e-8, abs=1e-12)
    assert p.d == pytest.approx(sum(b.d.values()), rel=1e-8, abs=1e-12)
    assert p.bottleneck == pytest.approx(b.bottleneck, rel=1e-8, abs=1e-12)
    K = p.lambdas.numel()
    assert K == b.kept.numel()
    root_psi = math.sqrt(b.bottleneck)  # every lambda is at most sqrt(Psi)
    assert_near(p.lambdas, b.lam[:K], rel=max(1e-7, b.eps), scale=root_psi)
    s_is = float(torch.linalg.matrix_norm(b.S_is, 2))
    if p.site.kind == "edge":
        E = torch.linalg.lstsq(
            ref.B(p.site.sources), -b.vperp, rcond=math.sqrt(REL), driver="gelsd"
        ).solution.T
        assert_near(p.edge_weight, E, rel=max(1e-6, b.eps), scale=s_is * root_psi)
        # the full least-squares fit removes the sum of every lambda^2 from the bottleneck
        after = float((b.vperp + b.BU @ p.edge_weight.T).pow(2).sum(1).mean())
        assert after == pytest.approx(b.bottleneck - float(b.lam.pow(2).sum()), rel=1e-7, abs=1e-12)
        return
    K = p.neurons  # min(requested, eigenvalues above the thresholds)
    assert K == p.fan_in.shape[0] == min(p.lambdas.numel(), requested)
    if K < requested:
        assert any("eigenvalues pass the thresholds" in note for note in p.notes)
    omega, alpha = fan_out_stack(p), p.fan_in
    lam0 = float(b.lam[0]) if b.lam.numel() else 0.0
    # per neuron, where the singular value is simple: omega_k alpha_k^T = lam_k v_k (S^-1/2 u_k)^T
    for k in range(K):
        gaps = [abs(float(b.lam[k] - b.lam[j])) for j in (k - 1, k + 1) if 0 <= j < b.lam.numel()]
        gap = min(gaps, default=lam0)
        if gap > 1e-3 * lam0:  # singular vectors move by (error of N) / (gap); N's scale is sqrt(Psi)
            expected = b.lam[k] * torch.outer(b.vh[k], b.S_is @ b.u[:, k])
            rel = max(1e-6, b.eps * root_psi / gap)
            assert_near(torch.outer(omega[:, k], alpha[k]), expected, rel=rel, scale=lam0 * s_is)
    # S-orthogonal fan-ins and orthogonal fan-outs, each of squared norm lambda_k
    assert_near(alpha @ b.S @ alpha.T, torch.diag(p.lambdas[:K]), rel=max(1e-7, b.eps), scale=lam0)
    assert_near(omega.T @ omega, torch.diag(p.lambdas[:K]), rel=max(1e-7, b.eps), scale=lam0)
    assert p.sum_lambda_sq == pytest.approx(float(p.lambdas[:K].pow(2).sum()), rel=1e-10, abs=1e-300)
    # the bottleneck identity as a statement about the matrices (any activation)
    after = float((b.vperp + b.BU @ (omega @ alpha).T).pow(2).sum(1).mean())
    assert after == pytest.approx(b.bottleneck - p.sum_lambda_sq, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_every_site_matches_brute_force(name):
    spec, model, xs, y, stats, ref = measured(HAND_WRITTEN[name])
    kinds = set()
    for site in enumerate_sites(spec, include_unsupported=False):
        p = propose(stats, site, "tiny", 3, weights=model.state_dict())
        b = brute(ref, spec, site)
        assert not b.ill_posed
        check_against_brute(p, b, ref, spec, 3)
        kinds.add(site.kind)
    assert kinds == {"widen", "node", "edge"}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=random_dags(), seed=st.integers(0, 2**16))
def test_random_dags_match_brute_force(spec, seed):
    spec, model, xs, y, stats, ref = measured(spec, n=24, seed=seed)
    sites = enumerate_sites(spec, include_unsupported=False)
    references = [brute(ref, spec, site) for site in sites]
    assume(not any(b.ill_posed for b in references))
    for site, b in zip(sites, references, strict=True):
        p = propose(stats, site, "tiny", 2, weights=model.state_dict())
        check_against_brute(p, b, ref, spec, 2)


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("site_id", ["widen:h2", "node:h1->out", "node:x->out"])
def test_bottleneck_theorem_with_identity_activation(site_id, K):
    """Adding the top K neurons (identity activation) to the real network lowers the bottleneck of the
    targets by exactly sum_{k<=K} lambda_k^2: the targets' pre-activations move by C B_U."""
    text = (
        with_activation(HAND_WRITTEN["mlp"], "identity")  # x 8 -> h1 6 -> h2 2 -> out 3: >= 3 lambdas each
        .replace("shape: [5]", "shape: [8]")
        .replace("h1: {width: 3", "h1: {width: 6")
        .replace("h2: {width: 4", "h2: {width: 2")
    )
    spec, model, xs, y, stats, ref = measured(text, n=64, seed=4)
    site = find_site(spec, site_id)
    b = brute(ref, spec, site)
    p = propose(stats, site, "tiny", K, weights=model.state_dict())
    assert p.neurons == K <= b.kept.numel(), "the fixture must offer at least 3 eigenvalues"
    spec2, w2 = replay(spec, model.state_dict(), proposal_actions(p, spec, 1.0, update=False))
    pre2, _, _ = forward(spec2, w2, xs)
    moved = torch.cat([pre2[w] - ref.pre[w] for w in site.targets], 1)
    torch.testing.assert_close(moved, b.BU @ (fan_out_stack(p) @ p.fan_in).T, **TOL)
    after = float((b.vperp + moved).pow(2).sum(1).mean())
    expected = p.bottleneck - float(b.lam[:K].pow(2).sum())
    assert after == pytest.approx(expected, rel=1e-9, abs=1e-13)
    assert p.sum_lambda_sq == pytest.approx(float(b.lam[:K].pow(2).sum()), rel=1e-9)
    # the grown compiled model agrees with the reference forward
    torch.testing.assert_close(
        dagrow.compile(spec2, w2, dtype=torch.float64)(xs[0]), forward(spec2, w2, xs)[2], rtol=0, atol=1e-12
    )


def _preserving_specs():
    for name, text in sorted(HAND_WRITTEN.items()):
        yield pytest.param(name, text, id=name)
        yield pytest.param(f"{name}-identity", with_activation(text, "identity"), id=f"{name}-identity")


@pytest.mark.parametrize("init", PRESERVING)
@pytest.mark.parametrize(("name", "text"), list(_preserving_specs()))
def test_function_preserving_inits_leave_outputs_unchanged(init, name, text):
    if init in ("gradmax", "random_fan_out"):  # sigma(0) = 0 on the widened node: tanh where needed
        text = with_activation(text, "tanh") if "identity" not in name else text
    spec, model, xs, y, stats, ref = measured(text, n=32)
    base = model(*xs)
    checked = 0
    for site in enumerate_sites(spec, include_unsupported=False):
        if site.kind == "edge":
            continue
        p = propose(stats, site, init, 3, weights=model.state_dict())
        if p.neurons == 0:
            continue
        assert init != "mirrored" or p.neurons == 4  # rounded up to pairs
        family = GrownFamily(model, p, update=False)
        for gamma in (0.0, 0.3, 1.0, 7.0):
            assert (family(gamma, *xs) - base).abs().max() <= 1e-12, (site.id, gamma)
        spec2, w2 = replay(spec, model.state_dict(), proposal_actions(p, spec, 2.5, update=False))
        grown = dagrow.compile(spec2, w2, dtype=torch.float64)
        assert (grown(*xs) - base).abs().max() <= 1e-12, site.id
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("site_id", ["widen:h2", "widen:h1", "node:h1->out", "node:x->out"])
def test_random_fan_out_is_gradmax_random_baseline(site_id):
    """random_fan_out: fan-in exactly 0, every fan-out column (stacked over the targets) with the mean
    norm of the existing weight columns into the targets, and the rewritten model computes the same
    outputs."""
    spec, model, xs, y, stats, ref = measured(with_activation(HAND_WRITTEN["mlp"], "tanh"))
    site = find_site(spec, site_id)
    weights = model.state_dict()
    p = propose(stats, site, "random_fan_out", 3, weights=weights)
    assert p.neurons == 3
    assert torch.equal(p.fan_in, torch.zeros_like(p.fan_in))
    into = [weights.get(f"edges.{e.key}.weight") for w in site.targets for e in spec.edges if e.target == w]
    norms = [t.double().norm(dim=0) for t in into if t is not None and t.dim() == 2]  # brute force
    expected = float(torch.cat(norms).mean())
    omega = torch.cat([p.fan_out[w] for w in site.targets], 0)
    assert omega.shape == (sum(stats.widths[w] for w in site.targets), 3)
    torch.testing.assert_close(omega.norm(dim=0), torch.full((3,), expected, dtype=torch.float64))
    assert torch.linalg.matrix_rank(omega) == min(omega.shape)  # random directions, not one repeated
    base = model(*xs)
    spec2, w2 = replay(spec, weights, proposal_actions(p, spec, 1.0, update=False))
    assert sum(t.numel() for t in w2.values()) > sum(t.numel() for t in weights.values())
    grown = dagrow.compile(spec2, w2, dtype=torch.float64)
    assert (grown(*xs) - base).abs().max() <= 1e-12
    # the fan-out really is in the grown weights (not dropped by the rewrite)
    mass = sum(float(t.abs().sum()) for t in w2.values())
    assert mass > sum(float(t.abs().sum()) for t in weights.values())


def test_gradmax_warns_when_sigma_at_zero_is_not_zero():
    spec, model, xs, y, stats, ref = measured(HAND_WRITTEN["skip"])  # h1 is softplus, softplus(0) = log 2
    with pytest.warns(UserWarning, match="gradmax needs sigma"):
        p = propose(stats, find_site(spec, "widen:h1"), "gradmax", 2, weights=model.state_dict())
    assert any("relu_grad1" in note for note in p.notes)


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_north_pre_activations_are_orthogonal_to_the_existing_ones(name):
    spec, model, xs, y, stats, ref = measured(HAND_WRITTEN[name])
    weights = model.state_dict()
    for site in enumerate_sites(spec, include_unsupported=False):
        if site.kind == "edge":
            continue
        p = propose(stats, site, "north", 2, weights=weights)
        BU = ref.B(site.sources)
        new = BU @ p.fan_in.T  # the new neurons' pre-activations over the measured batch
        if p.neurons < 2:
            assert p.notes and "orthogonal" in p.notes[0]
            assert p.neurons > 0 or p.skipped
        if p.neurons == 0:
            continue
        gram = new.T @ new / ref.n
        torch.testing.assert_close(
            gram, torch.diag(torch.diagonal(gram)), rtol=0, atol=1e-10 * float(gram.max())
        )
        assert float(torch.diagonal(gram).min()) > 0
        if site.kind == "widen":
            old = ref.pre[site.node]
            cross = new.T @ old / ref.n
            bound = 1e-10 * float(new.norm() * old.norm()) / ref.n
            assert float(cross.abs().max()) <= bound, site.id
            # and the new fan-in rows have the default initialisation's norm
            assert torch.allclose(p.fan_in.norm(dim=1), p.fan_in.norm(dim=1)[0].expand(p.neurons))


def test_north_on_a_node_with_no_room_is_skipped():
    spec, model, xs, y, stats, ref = measured(HAND_WRITTEN["two_inputs"])
    p = propose(
        stats, find_site(spec, "widen:h2"), "north", 2, weights=model.state_dict()
    )  # U = (b,), 2 rows
    assert p.neurons == 0 and p.skipped and "orthogonal" in p.skipped


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_gradmax_fan_out_is_the_top_right_singular_vectors_of_M(name):
    text = with_activation(HAND_WRITTEN[name], "tanh")
    spec, model, xs, y, stats, ref = measured(text)
    weights = model.state_dict()
    for site in enumerate_sites(spec, include_unsupported=False):
        if site.kind == "edge":
            continue
        b = brute(ref, spec, site)
        p = propose(stats, site, "gradmax", 2, weights=weights)
        K = min(2, min(b.M.shape))
        assert p.neurons == K
        assert torch.count_nonzero(p.fan_in) == 0
        norms = [weights[f"edges.{e.key}.weight"].norm(dim=0) for e in spec.edges if e.target in site.targets]
        scale = float(torch.cat(norms).mean())
        omega = fan_out_stack(p)
        _, sv, vh = torch.linalg.svd(b.M, full_matrices=False)
        for k in range(K):
            if k + 1 < sv.numel() and float(sv[k] - sv[k + 1]) < 1e-6 * float(sv[0]):
                continue  # a repeated singular value: any basis of its space is right
            cos = float(omega[:, k] @ vh[k]) / scale
            assert abs(abs(cos) - 1) < 1e-9, (site.id, k, cos)
        torch.testing.assert_close(omega.norm(dim=0), torch.full((K,), scale, dtype=torch.float64), **TOL)
        slope = 1.0  # tanh'(0)
        assert p.init_score == pytest.approx(slope * float((b.M @ omega).pow(2).sum()), rel=1e-9)


# --------------------------------------------------------------------------------------------------
# degenerate inputs
# --------------------------------------------------------------------------------------------------

RELU = with_activation(HAND_WRITTEN["mlp"], "relu")


def assert_finite(p) -> None:
    tensors = [p.lambdas, p.fan_in, *p.fan_out.values(), *(u.delta for u in p.updates.values())]
    if p.edge_weight is not None:
        tensors.append(p.edge_weight)
    for t in tensors:
        assert torch.isfinite(t).all(), (p.site.id, p.init)
    for v in (p.d, p.bottleneck, p.first_order_improvement, p.sum_lambda_sq):
        assert math.isfinite(v), (p.site.id, p.init)
    if p.init in ("tiny", "north") and p.neurons == 0 and p.site.kind != "edge":
        assert p.skipped, (p.site.id, p.init)
    if p.site.kind == "edge" and p.lambdas.numel() == 0:
        assert p.skipped


def _degenerate(kind: str):
    spec, model, xs, y = setup(RELU, n=32, seed=1)
    x = xs[0]
    if kind == "duplicate_column":
        x[:, 1] = x[:, 0]
    elif kind == "constant_inputs":
        x = torch.full_like(x, 0.7)
    elif kind == "dead_relu":
        with torch.no_grad():
            model.get_parameter("nodes.h1.bias").fill_(-1e3)  # every pre-activation of h1 is negative
    elif kind == "zero_inputs":
        x = torch.zeros_like(x)
    return spec, model, x, y


@pytest.mark.parametrize("kind", ["duplicate_column", "constant_inputs", "dead_relu", "zero_inputs"])
def test_degenerate_statistics_give_finite_proposals(kind):
    spec, model, x, y = _degenerate(kind)
    stats = measure(model, [(x, y)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gradmax on relu warns; that is tested elsewhere
        for site in enumerate_sites(spec, include_unsupported=False):
            for init in INITS:
                if site.kind == "edge" and init != "tiny":
                    continue
                p = propose(stats, site, init, 2, weights=model.state_dict())
                assert_finite(p)
                family = GrownFamily(model, p)
                assert torch.isfinite(family(0.5, x)).all()
    if kind == "dead_relu":
        p = propose(stats, find_site(spec, "edge:h1->out"), "tiny", 2)
        assert p.skipped and "no bottleneck direction" in p.skipped
        p = propose(stats, find_site(spec, "node:h1->h2"), "tiny", 2)
        assert torch.count_nonzero(p.fan_in[:, :3]) == 0  # nothing is read from the dead node


def test_singular_S_matches_the_pseudo_inverse():
    spec, model, x, y = _degenerate("duplicate_column")
    stats = measure(model, [(x, y)])
    ref = reference(spec, model.state_dict(), [x], y)
    for site_id in ("widen:h1", "node:x->h2", "edge:x->out"):
        site = find_site(spec, site_id)
        p = propose(stats, site, "tiny", 2)
        check_against_brute(p, brute(ref, spec, site), ref, spec, 2)


def test_unknown_init_and_bad_counts_are_value_errors():
    spec, model, xs, y, stats, ref = measured(HAND_WRITTEN["mlp"], n=8)
    site = find_site(spec, "widen:h1")
    with pytest.raises(ValueError, match="unknown init 'fancy'.*tiny"):
        propose(stats, site, "fancy")
    with pytest.raises(ValueError, match="at least 1"):
        propose(stats, site, "tiny", 0)
    with pytest.raises(ValueError, match="weights"):
        propose(stats, site, "north", 1)


def test_unsupported_site_is_skipped_with_its_reason():
    spec, model, xs, y, stats, ref = measured(HAND_WRITTEN["mlp"], n=8)
    site = next(s for s in enumerate_sites(spec) if not s.supported)
    p = propose(stats, site, "tiny", 2)
    assert p.skipped == site.reason and p.neurons == 0 and "output" in p.skipped


def test_widen_respects_max_width():
    text = HAND_WRITTEN["mlp"].replace(
        "new_node_activation: tanh}", "new_node_activation: tanh, max_width: 4}"
    )
    spec, model, xs, y, stats, ref = measured(text, n=16)
    p = propose(stats, find_site(spec, "widen:h1"), "random", 5)  # h1 has 3 of 4
    assert p.neurons == 1


def test_deepening_is_refused_when_the_identity_block_would_pass_max_width():
    """Deepening u->w inserts a node of u's size (width or channels); above max_width the grown spec
    would be invalid, so the site says why instead of failing in the rewrite."""
    spec = dagrow.load_spec("""
version: 1
inputs: {x: {shape: [8]}, img: {shape: [5, 4, 4]}}
nodes:
  h: {width: 4, activation: relu}
  c: {channels: 3, activation: relu}
  d: {channels: 2, activation: relu}
  f: {width: 32, bias: false}
  out: {width: 2}
edges:
  - {from: x, to: h}
  - {from: img, to: c, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: c, to: d, op: {type: conv2d, kernel: 3, padding: 1}}
  - {from: d, to: f, op: flatten}
  - {from: f, to: out}
  - {from: h, to: out}
outputs: [out]
growth: {widen: [h], deepen: all, new_nodes: none, max_width: 4}
""")
    sites = {s.id: s for s in enumerate_sites(spec) if s.kind == "deepen"}
    for refused, size in (("deepen:x->h", 8), ("deepen:img->c", 5), ("deepen:f->out", 32)):
        assert not sites[refused].supported
        assert f"size {size}, more than max_width 4" in str(sites[refused].reason)
    assert sites["deepen:c->d"].supported and sites["deepen:h->out"].supported  # 3 and 4 <= 4


def test_a_new_node_beside_an_existing_edge_has_no_direction_by_construction():
    """For a pair (u, w) whose u already feeds w, N_UW = -(1/n) sum B_u Vperp_w^T = 0 by the normal
    equations of dW*_w; a pair that skips a node has a direction. The reason says which case it is."""
    spec = dagrow.load_spec("""
version: 1
inputs: {x: {shape: [3]}}
nodes:
  h: {width: 2, activation: tanh}
  out: {width: 2}
edges:
  - {from: x, to: h}
  - {from: h, to: out}
outputs: [out]
growth: {new_nodes: all}
""")
    model = dagrow.compile(spec, seed=0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    y = torch.sin(3 * x[:, :2]) + x[:, 2:] ** 2
    stats = measure(model, [(x, y)])
    beside = propose(stats, find_site(spec, "node:h->out"), "tiny", 2)
    assert beside.neurons == 0 and "h already feeds out directly" in beside.skipped
    U = ["h", "1"]
    N = -stats.grad_moment(U, "out") + stats.moment(U, U) @ beside.updates["out"].delta.T
    assert float(N.abs().max()) < 1e-12 * float(stats.grad_moment(U, "out").abs().max())
    skipping = propose(stats, find_site(spec, "node:x->out"), "tiny", 2)
    assert skipping.skipped is None and skipping.neurons == 2
