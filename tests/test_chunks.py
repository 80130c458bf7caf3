"""growth_batch: all: the whole training set streamed in chunks gives the statistics, gamma* and
Delta_l of one concatenated batch (float64), and the loop's growth decisions report their run time."""

from __future__ import annotations

import pytest
import torch
from bruteforce import HAND_WRITTEN, setup

from dagrow.chunks import Chunks, chunked_loss, split
from dagrow.config import GrowthConfig
from dagrow.growth.amplitude import amplitude_factor
from dagrow.growth.proposals import propose
from dagrow.loop import grow
from dagrow.presets.common import mlp
from dagrow.sites import enumerate_sites
from dagrow.stats import loss_function, measure
from dagrow.tasks import make_task


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["mlp", "skip"])
def test_statistics_streamed_in_chunks_equal_the_concatenated_batch(name):
    spec, model, xs, y = setup(HAND_WRITTEN[name], n=101, seed=1)
    x = xs[0]
    whole = measure(model, [(x, y)])
    chunks = split(x, y, 17)  # 6 chunks of 17 and one of 16
    assert [len(c[0]) for c in chunks] == [17] * 5 + [16]
    streamed = measure(model, chunks)
    assert streamed.n == whole.n == 101
    assert streamed.loss == pytest.approx(whole.loss, rel=1e-12)
    for store in ("pair_sums", "grad_sums", "g_sums", "g_sq_sums"):
        a, b = getattr(streamed, store), getattr(whole, store)
        assert a.keys() == b.keys() and a, store
        for k in a:
            _close(a[k], b[k])


def test_amplitude_over_chunks_equals_the_amplitude_over_the_concatenated_set():
    spec, model, xs, y = setup(HAND_WRITTEN["mlp"], n=90, seed=2)
    x = xs[0]
    stats = measure(model, [(x, y)])
    weights = model.state_dict()
    checked = 0
    for site in enumerate_sites(spec, include_unsupported=False):
        p = propose(stats, site, "tiny", 2, weights=weights)
        if p.neurons == 0 and p.edge_weight is None:
            continue
        for update in (False, True):
            whole, _ = amplitude_factor(model, p, (x, y), "mse", update=update)
            streamed, _ = amplitude_factor(model, p, split(x, y, 16), "mse", update=update)
            assert streamed.loss_before == pytest.approx(whole.loss_before, rel=1e-12)
            assert streamed.gamma == pytest.approx(whole.gamma, rel=1e-9, abs=1e-15)
            assert streamed.delta_l == pytest.approx(whole.delta_l, rel=1e-9, abs=1e-15)
            checked += whole.gamma > 0
    assert checked >= 2  # some searches found a positive amplitude (the test can fail)


def test_chunked_loss_is_the_mean_over_every_sample():
    gen = torch.Generator().manual_seed(0)
    out, target = torch.randn(23, 3, generator=gen, dtype=torch.float64), torch.randint(0, 3, (23,))
    loss = loss_function("cross_entropy")
    assert chunked_loss(lambda x: x, split(out, target, 5), loss) == pytest.approx(
        float(loss(out, target)), rel=1e-12
    )
    assert chunked_loss(lambda x: x, (out, target), loss) == pytest.approx(
        float(loss(out, target)), rel=1e-15
    )
    with pytest.raises(ValueError, match="at least one sample"):
        split(out, target, 0)
    assert isinstance(split(out, target), Chunks)


def test_growth_batch_all_decides_as_the_whole_shuffled_set(monkeypatch):
    """The first decision with growth_batch: all (in chunks, in order) equals the one on a growth batch
    of every training sample drawn at once (the same samples, another order): statistics are sums."""
    monkeypatch.setattr("dagrow.loop.CHUNK", 32)  # 140 training samples: 5 chunks
    task = make_task("regression1d", seed=0, n=200)
    spec = mlp("r", 1, [3], 1, activation="tanh")
    n_train = len(task.train.x)
    base = GrowthConfig(growths=1, every=3, batch_size=32, dtype="float64", seed=4, optimizer="sgd")
    lines = []
    for gb in ("all", n_train):
        result = grow(spec, task, base.replace(growth_batch=gb))
        lines.append(next(h for h in result.history if h["event"] in ("growth", "rollback")))
    a, b = lines
    assert a["site"] == b["site"]
    assert a["loss_before"] == pytest.approx(b["loss_before"], rel=1e-10)
    assert a["gamma"] == pytest.approx(b["gamma"], rel=1e-6)
    assert a["delta_l"] == pytest.approx(b["delta_l"], rel=1e-6, abs=1e-14)
    assert a["decision_seconds"] > 0 and b["decision_seconds"] > 0


def test_growth_batch_all_is_refused_with_training_statistics():
    with pytest.raises(ValueError, match="not with growth_batch=all"):
        GrowthConfig(growth_batch="all", statistics="training")
    with pytest.raises(ValueError):
        GrowthConfig(growth_batch="some")
    assert GrowthConfig(growth_batch="all").growth_batch == "all"
