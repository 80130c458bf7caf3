"""The statistics pass against brute force built sample by sample (DESIGN.md invariants 3 and 4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from bruteforce import HAND_WRITTEN, linear_sources, random_dags, reference, setup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dagrow
from dagrow.recorder import Recorder
from dagrow.sites import enumerate_sites
from dagrow.stats import StatsError, measure

TOL = dict(rtol=1e-10, atol=1e-12)


def assert_matches_reference(stats, ref, spec) -> int:
    """Every accumulated block equals its brute-force mean; returns how many blocks were checked."""
    checked = 0
    for x, y in stats.pair_sums:
        torch.testing.assert_close(stats.moment([x], [y]), ref.moment([x], [y]), **TOL)
        checked += 1
    for x, w in stats.grad_sums:
        torch.testing.assert_close(stats.grad_moment([x], w), ref.grad_moment([x], w), **TOL)
        checked += 1
    for w in stats.g_sums:
        torch.testing.assert_close(stats.G(w), ref.G(w), **TOL)
        assert stats.grad_sq(w) == pytest.approx(
            float(ref.grad[w].pow(2).sum(1).mean()), rel=1e-10, abs=1e-14
        )
        checked += 1
    assert stats.loss == pytest.approx(ref.loss, rel=1e-12)
    assert stats.n == ref.n
    # every block a supported site needs is there, assembled in the site's order
    for site in enumerate_sites(spec, include_unsupported=False):
        U = site.sources
        torch.testing.assert_close(stats.moment(U, U), ref.moment(U, U), **TOL)
        for w in site.targets:
            bw = linear_sources(spec, w)
            torch.testing.assert_close(stats.moment(U, bw), ref.moment(U, bw), **TOL)
            torch.testing.assert_close(stats.moment(bw, bw), ref.moment(bw, bw), **TOL)
            torch.testing.assert_close(stats.grad_moment(U, w), ref.grad_moment(U, w), **TOL)
            torch.testing.assert_close(stats.grad_moment(bw, w), ref.grad_moment(bw, w), **TOL)
    # S_v, M_v and G_v of every node (all_nodes=True)
    for v in spec.nodes:
        bv = linear_sources(spec, v)
        torch.testing.assert_close(stats.moment(bv, bv), ref.moment(bv, bv), **TOL)
        torch.testing.assert_close(stats.grad_moment(bv, v), ref.grad_moment(bv, v), **TOL)
        torch.testing.assert_close(stats.G(v), ref.G(v), **TOL)
    return checked


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_specs_match_brute_force(name):
    spec, model, xs, y = setup(HAND_WRITTEN[name], n=24, seed=3)
    stats = measure(model, [(tuple(xs), y)], "mse")
    ref = reference(spec, model.state_dict(), xs, y)
    assert assert_matches_reference(stats, ref, spec) > 10


def test_cross_entropy_matches_brute_force():
    spec, model, xs, _ = setup(HAND_WRITTEN["skip"], n=20, seed=5)
    labels = torch.arange(20) % spec.nodes["out"].width
    stats = measure(model, [(tuple(xs), labels)], "cross_entropy")
    ref = reference(spec, model.state_dict(), xs, labels, F.cross_entropy)
    assert_matches_reference(stats, ref, spec)


def test_only_the_requested_sites_are_measured():
    spec, model, xs, y = setup(HAND_WRITTEN["mlp"], n=16)
    site = next(s for s in enumerate_sites(spec) if s.id == "edge:x->out")
    stats = measure(model, [(xs[0], y)], sites=[site], all_nodes=False)
    ref = reference(spec, model.state_dict(), xs, y)
    # the site's own block and the target's B_out (for dW*_out), nothing for h1 or h2
    assert set(stats.grad_sums) == {("x", "out"), ("h2", "out"), ("1", "out")}
    assert set(stats.g_sums) == {"out"}
    torch.testing.assert_close(stats.grad_moment(["x"], "out"), ref.grad_moment(["x"], "out"), **TOL)
    with pytest.raises(KeyError, match="not measured"):
        stats.grad_moment(["h1"], "h2")
    with pytest.raises(KeyError, match="not measured"):
        stats.moment(["h1"], ["h2"])


def test_without_output_factors_only_the_gradient_norms_are_kept():
    spec, model, xs, y = setup(HAND_WRITTEN["skip"], n=20, seed=7)
    full = measure(model, [(tuple(xs), y)], "mse")
    lean = measure(model, [(tuple(xs), y)], "mse", output_factors=False)
    ref = reference(spec, model.state_dict(), xs, y)
    assert lean.g_sums == {} and set(lean.g_sq_sums) == set(full.g_sums)
    for w in full.g_sums:
        assert lean.grad_sq(w) == pytest.approx(float(ref.grad[w].pow(2).sum(1).mean()), rel=1e-10)
        assert lean.grad_sq(w) == pytest.approx(full.grad_sq(w), rel=1e-12)
        with pytest.raises(KeyError, match="output_factors=True"):
            lean.G(w)
    for key in full.pair_sums:
        assert torch.equal(lean.pair_sums[key], full.pair_sums[key])
    for key in full.grad_sums:
        assert torch.equal(lean.grad_sums[key], full.grad_sums[key])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=random_dags(), seed=st.integers(0, 2**16), n=st.integers(3, 12))
def test_random_dags_match_brute_force(spec, seed, n):
    spec, model, xs, y = setup(spec, n=n, seed=seed)
    stats = measure(model, [(tuple(xs), y)], "mse")
    ref = reference(spec, model.state_dict(), xs, y)
    assert_matches_reference(stats, ref, spec)


def _assert_same_statistics(a, b) -> None:
    assert set(a.pair_sums) == set(b.pair_sums)
    assert set(a.grad_sums) == set(b.grad_sums)
    assert set(a.g_sums) == set(b.g_sums)
    for k in a.pair_sums:
        torch.testing.assert_close(a.pair_sums[k] / a.n, b.pair_sums[k] / b.n, **TOL)
    for k in a.grad_sums:
        torch.testing.assert_close(a.grad_sums[k] / a.n, b.grad_sums[k] / b.n, **TOL)
    for k in a.g_sums:
        torch.testing.assert_close(a.G(k), b.G(k), **TOL)
    assert a.loss == pytest.approx(b.loss, rel=1e-12)


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_streamed_batches_equal_the_concatenated_batch(name):
    spec, model, xs, y = setup(HAND_WRITTEN[name], n=40, seed=7)
    whole = measure(model, [(tuple(xs), y)])
    cuts = [0, 7, 20, 21, 40]  # uneven sizes, one batch of a single sample
    parts = [(tuple(x[a:b] for x in xs), y[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    streamed = measure(model, iter(parts))  # a one-shot iterator is enough
    assert streamed.n == whole.n == 40
    _assert_same_statistics(streamed, whole)
    for k in whole.pair_sums:  # the sums themselves agree, not only the means
        torch.testing.assert_close(streamed.pair_sums[k], whole.pair_sums[k], **TOL)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_statistics_do_not_depend_on_the_batch_size(loss):
    spec, model, xs, y = setup(HAND_WRITTEN["two_inputs"], n=15, seed=2)
    if loss == "cross_entropy":
        y = torch.arange(15) % 2
    once = measure(model, [(tuple(xs), y)], loss)
    twice = measure(model, [(tuple(torch.cat([x, x]) for x in xs), torch.cat([y, y]))], loss)
    assert twice.n == 2 * once.n
    _assert_same_statistics(once, twice)


def test_sum_reduction_is_not_the_convention():
    """A loss that sums over samples scales every gradient statistic by n (documented convention)."""
    spec, model, xs, y = setup(HAND_WRITTEN["mlp"], n=10)
    mean = measure(model, [(xs[0], y)], "mse")
    summed = measure(model, [(xs[0], y)], lambda o, t: F.mse_loss(o, t, reduction="sum") / t.shape[1])
    torch.testing.assert_close(summed.G("out"), 100 * mean.G("out"), **TOL)


def test_accumulation_dtype():
    spec = dagrow.load_spec(HAND_WRITTEN["mlp"])
    model = dagrow.compile(spec, seed=0)  # float32
    x, y = torch.randn(32, 5), torch.randn(32, 3)
    s64 = measure(model, [(x, y)])
    s32 = measure(model, [(x, y)], dtype=None)
    assert all(t.dtype == torch.float64 for t in s64.pair_sums.values())
    assert all(t.dtype == torch.float32 for t in s32.pair_sums.values())
    for k in s64.grad_sums:
        torch.testing.assert_close(s32.grad_sums[k].double(), s64.grad_sums[k], rtol=1e-4, atol=1e-5)


def test_products_dtype():
    """A float32 model's products run in float32 by default and are summed in float64; products=float64
    computes them from float64 copies. Both agree with a float64 model to float32 round-off."""
    spec = dagrow.load_spec(HAND_WRITTEN["skip"])
    model = dagrow.compile(spec, seed=0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen), torch.randn(64, 2, generator=gen)
    fast = measure(model, [(x, y)] * 3)
    exact = measure(model, [(x, y)] * 3, products=torch.float64)
    model64 = dagrow.compile(spec, dict(model.state_dict()), dtype=torch.float64)
    reference = measure(model64, [(x.double(), y.double())] * 3)
    for store in ("pair_sums", "grad_sums", "g_sums"):
        for k, want in getattr(reference, store).items():
            got_fast, got_exact = getattr(fast, store)[k], getattr(exact, store)[k]
            assert got_fast.dtype == got_exact.dtype == torch.float64
            scale = float(want.abs().max())  # the activations themselves are float32: 1e-7 relative
            torch.testing.assert_close(got_exact, want, rtol=1e-5, atol=1e-5 * scale)
            torch.testing.assert_close(got_fast, want, rtol=1e-5, atol=1e-5 * scale)


# --------------------------------------------------------------------------------------------------
# statistics recorded during training steps
# --------------------------------------------------------------------------------------------------


def _record(model, batches, loss=F.mse_loss, *, lr=0.0, **options):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with Recorder(model, **options) as recorder:
        for xs, y in batches:
            opt.zero_grad()
            recorder.backward(loss(model(*xs), y))
            opt.step()
    return recorder.result()


@pytest.mark.parametrize("weight_grads", [True, False])
@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_recorded_statistics_equal_a_statistics_pass(name, weight_grads):
    spec, model, xs, y = setup(HAND_WRITTEN[name], n=40, seed=5)
    cuts = [0, 13, 14, 40]
    parts = [(tuple(x[a:b] for x in xs), y[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    measured = measure(model, parts)
    recorded = _record(model, parts, weight_grads=weight_grads)
    assert recorded.n == measured.n == 40
    for store in ("pair_sums", "grad_sums", "g_sums", "g_sq_sums"):
        assert getattr(recorded, store).keys() == getattr(measured, store).keys(), store
    _assert_same_statistics(recorded, measured)


def test_recorder_reads_the_weight_gradients_and_leaves_them_to_the_optimizer():
    spec, model, xs, y = setup(HAND_WRITTEN["mlp"], n=20, seed=1)
    plain = dagrow.compile(spec, dict(model.state_dict()), dtype=torch.float64)
    F.mse_loss(plain(xs[0]), y).backward()
    with Recorder(model) as recorder:
        recorder.backward(F.mse_loss(model(xs[0]), y))
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, plain.get_parameter(name).grad), name
    # the M block of the edge x -> h1 is n times its weight gradient, transposed
    stats = recorder.result()
    w = model.get_parameter("edges.x__h1.weight")
    torch.testing.assert_close(stats.grad_sums[("x", "h1")], 20 * w.grad.T, **TOL)


def test_recorder_misuse_is_a_clear_error():
    spec, model, xs, y = setup(HAND_WRITTEN["mlp"], n=8)
    recorder = Recorder(model)
    with pytest.raises(RuntimeError, match="with block"):
        recorder.backward(F.mse_loss(model(xs[0]), y))
    with recorder, pytest.raises(StatsError, match="no forward"):
        recorder.backward(torch.zeros((), requires_grad=True))
    with recorder:
        with torch.no_grad():
            model(xs[0])
        with pytest.raises(StatsError, match="without autograd"):
            recorder.backward(torch.zeros((), requires_grad=True))
    with Recorder(model) as again, pytest.raises(StatsError, match="not finite"):
        again.backward(F.mse_loss(model(xs[0]), y) * math.inf)
    with pytest.raises(StatsError, match="no batch"):
        Recorder(model).result()
    assert not model._forward_pre_hooks and not model.get_submodule("nodes.h1")._forward_hooks


@pytest.mark.parametrize("where", ["input", "second_input", "target"])
def test_nan_in_the_batch_is_a_clear_error(where):
    spec, model, xs, y = setup(HAND_WRITTEN["two_inputs"], n=8)
    xs = [x.clone() for x in xs]
    if where == "input":
        xs[0][3, 1] = math.nan
        match = r"batch 1: input 'a' contains NaN"
    elif where == "second_input":
        xs[1][0, 0] = math.inf
        match = r"batch 1: input 'b' contains NaN or infinite"
    else:
        y = y.clone()
        y[2, 0] = math.nan
        match = r"batch 1: the loss is not finite"
    good = (tuple(x.clone().nan_to_num(0.0, 0.0, 0.0) for x in xs), y.nan_to_num(0.0))
    with pytest.raises(StatsError, match=match):
        measure(model, [good, (tuple(xs), y)])


def test_bad_streams_are_clear_errors():
    spec, model, xs, y = setup(HAND_WRITTEN["two_inputs"], n=8)
    with pytest.raises(StatsError, match="at least one sample"):
        measure(model, [])
    with pytest.raises(StatsError, match="2 inputs but a batch gives 1"):
        measure(model, [(xs[0], y)])
    with pytest.raises(StatsError, match=r"pair \(inputs, target\)"):
        measure(model, [tuple(xs)[:1]])
    with pytest.raises(StatsError, match="scalar"):
        measure(model, [(tuple(xs), y)], lambda o, t: (o - t).pow(2))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        measure(model, [(tuple(xs), y)], "hinge")


def test_overflow_is_reported_not_returned():
    spec, model, xs, y = setup(HAND_WRITTEN["mlp"], n=8)
    big = xs[0] * 1e200  # finite inputs whose products overflow float64
    with pytest.raises(StatsError, match="non-finite statistics"):
        measure(model, [(big, y)], lambda o, t: (o * 0).sum() / o.shape[0])


@pytest.mark.gpu
def test_cuda_statistics_equal_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    spec, model, xs, y = setup(HAND_WRITTEN["skip"], n=256, seed=11)
    cpu = measure(model, [(xs[0], y)])
    gpu_model = dagrow.compile(spec, model.state_dict(), dtype=torch.float64, device="cuda")
    gpu = measure(gpu_model, [(xs[0].cuda(), y.cuda())])
    assert all(t.device.type == "cuda" for t in gpu.pair_sums.values())
    for k in cpu.pair_sums:
        torch.testing.assert_close(gpu.pair_sums[k].cpu(), cpu.pair_sums[k], **TOL)
    for k in cpu.grad_sums:
        torch.testing.assert_close(gpu.grad_sums[k].cpu(), cpu.grad_sums[k], **TOL)
    for k in cpu.g_sums:
        torch.testing.assert_close(gpu.g_sums[k].cpu(), cpu.g_sums[k], **TOL)
    # a float32 model on the GPU, float64 accumulation: agrees to float32 precision
    m32 = dagrow.compile(spec, model.state_dict(), device="cuda")
    s32 = measure(m32, [(xs[0].float().cuda(), y.float().cuda())])
    for k in cpu.grad_sums:
        torch.testing.assert_close(s32.grad_sums[k].cpu(), cpu.grad_sums[k], rtol=1e-4, atol=1e-5)
