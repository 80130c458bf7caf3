"""dagrow.Grower in a user's own loop: plans, the optimizer updated in place, function preservation,
and the contract every strategy, init and site kind keeps."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import dagrow
from dagrow.growth.actions import SITE_ACTIONS, proposal_actions
from dagrow.growth.inits import FUNCTION_PRESERVING, INITS
from dagrow.growth.proposals import propose_all
from dagrow.optim import OptimizerError
from dagrow.plan import Plan
from dagrow.planner import STRATEGIES, make_strategy
from dagrow.recorder import Recorder
from dagrow.rewrite import replay
from dagrow.schedule import SCHEDULES
from dagrow.sites import enumerate_sites
from dagrow.stats import measure

SPEC = """
version: 1
name: grower
inputs: {x: {shape: [5]}}
nodes:
  h1: {width: 3, activation: tanh}
  h2: {width: 3, activation: tanh}
  out: {width: 2}
edges:
  - {from: x, to: h1}
  - {from: h1, to: h2}
  - {from: h2, to: out}
  - {from: x, to: h2}
outputs: [out]
growth: {new_edges: all, new_node_activation: tanh, deepen: all}
"""


def data(n: int = 96, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    y = torch.stack([torch.sin(2 * x[:, 0]) * x[:, 1], torch.cos(x[:, 2] * x[:, 3])], 1)
    return x, y


def train(model, opt, x, y, steps: int, sched=None) -> None:
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


def snapshot(opt, model) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
        for name, p in model.named_parameters()
        if p in opt.state
    }


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_step_keeps_the_optimizer_state_of_old_entries_exactly(optimizer):
    x, y = data()
    grower = dagrow.Grower(SPEC, loss="mse", dtype=torch.float64, growths=3, neurons=2, seed=1)
    model = grower.model
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    train(model, opt, x, y, 5, sched)
    grown_once = False
    while not grower.finished:
        before = snapshot(opt, model)
        old_shapes = {n: p.shape for n, p in model.named_parameters()}
        step = grower.step(model, opt, [(x[:48], y[:48]), (x[48:], y[48:])])
        model = step.model
        assert model is grower.model
        params = dict(model.named_parameters())
        # the optimizer holds exactly the model's parameters, in place
        held = [p for g in opt.param_groups for p in g["params"]]
        assert {id(p) for p in held} == {id(p) for p in params.values()}
        for name, state in before.items():
            if name not in params:
                continue  # removed by the rewrite (deepen)
            p = params[name]
            for key, value in state.items():
                now = opt.state[p][key]
                if value.dim() == 0:
                    assert torch.equal(now, value), (name, key)
                    continue
                old = tuple(slice(0, s) for s in value.shape)
                assert torch.equal(now[old], value), (name, key)  # old entries: exactly as before
                rest = now.clone()
                rest[old] = 0
                assert torch.count_nonzero(rest) == 0, (name, key)  # new entries: zero
        grown_once |= any(old_shapes.get(n) != p.shape for n, p in params.items())
        lr_before = sched.get_last_lr()[0]
        train(model, opt, x, y, 3, sched)  # the scheduler keeps stepping the same optimizer
        assert sched.get_last_lr()[0] != lr_before
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    assert grown_once, "nothing grew"
    assert grower.schedule.reason == "growths 3 reached"


@pytest.mark.parametrize("init", sorted(FUNCTION_PRESERVING))
def test_function_preserving_inits_leave_the_outputs_unchanged_through_step(init):
    """New neurons of a function-preserving init (a new edge is a least-squares fit whatever the init)."""
    x, y = data()
    spec = SPEC.replace("new_edges: all", "new_edges: none")
    grower = dagrow.Grower(spec, loss="mse", dtype=torch.float64, init=init, growths=2, neurons=2, seed=2)
    model = grower.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, opt, x, y, 5)
    grew = False
    while not grower.finished:
        with torch.no_grad():
            before = model(x)
        step = grower.step(model, opt, (x, y))
        model = step.model
        grew |= step.grew
        with torch.no_grad():
            torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)
    assert grew, f"{init}: nothing grew"


def test_statistics_recorded_during_training_steps_feed_step():
    x, y = data()
    grower = dagrow.Grower(SPEC, loss="mse", dtype=torch.float64, growths=1, seed=0)
    model = grower.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sites = enumerate_sites(model.spec, include_unsupported=False)
    with Recorder(model, sites=sites, output_factors=False) as rec:
        opt.zero_grad()
        rec.backward(F.mse_loss(model(x), y))
        opt.step()
    step = grower.step(model, opt, (x, y), statistics=rec.result())
    assert step.plans and step.plans[0].scores


def test_any_loss_callable_and_json_reports():
    x, y = data()

    def huber(out, target):
        return F.smooth_l1_loss(out, target)

    grower = dagrow.Grower(SPEC, loss=huber, dtype=torch.float64, growths=1)
    step = grower.step(grower.model, None, (x, y), info={"epoch": 3})
    report = json.loads(json.dumps(step.report))
    assert report["events"][0]["epoch"] == 3
    assert report["plans"][0]["strategy"] == "amplitude_factor"
    scored = {s["site"] for s in report["plans"][0]["scores"]}
    assert scored == {s.id for s in enumerate_sites(dagrow.load_spec(SPEC)) if s.supported}


def test_unsupported_optimizers_and_bad_input_are_refused_clearly():
    x, y = data()
    grower = dagrow.Grower(SPEC, loss="mse", dtype=torch.float64, growths=1)
    lbfgs = torch.optim.LBFGS(grower.model.parameters())
    with pytest.raises(OptimizerError, match="LBFGS"):
        grower.step(grower.model, lbfgs, (x, y))
    adam = torch.optim.Adam(grower.model.parameters())
    p = next(iter(grower.model.parameters()))
    adam.state[p]["factored"] = torch.zeros(7)
    with pytest.raises(OptimizerError, match="not shaped like the parameter"):
        grower.step(grower.model, adam, (x, y))
    with pytest.raises(TypeError, match="Grower.model"):
        grower.step(torch.nn.Linear(2, 2), None, (x, y))
    with pytest.raises(ValueError, match="unknown strategy 'greedy'"):
        dagrow.Grower(SPEC, strategy="greedy")
    with pytest.raises(ValueError, match="did you mean 'tiny'"):
        dagrow.Grower(SPEC, init="TINY")
    with pytest.raises(ValueError, match="unknown loss"):
        dagrow.Grower(SPEC, loss="hinge")


# --------------------------------------------------------------------------------------------------
# contracts: every strategy, every init at every site kind, every schedule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_returns_a_plan_that_applies(name):
    x, y = data()
    model = dagrow.compile(SPEC, dtype=torch.float64, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, opt, x, y, 20)
    sites = enumerate_sites(model.spec, include_unsupported=False)
    options = {"settings": None} if name == "natural" else {"init": "tiny", "neurons": 2}
    strategy = make_strategy(name, **options)
    plan = strategy.plan(model, (x, y), "mse", sites)
    assert isinstance(plan, Plan) and plan.strategy == name
    json.dumps(plan.to_dict())
    assert plan.scores and {s.site for s in plan.scores} <= {s.id for s in sites}
    if plan.grows:
        spec2, w2 = replay(model.spec, model.state_dict(), plan.actions)
        assert dagrow.num_params(spec2) > dagrow.num_params(model.spec)
        assert plan.site is not None and plan.kind is not None
    else:
        assert plan.reason


@pytest.mark.parametrize("init", INITS.names())
@pytest.mark.parametrize("kind", ["widen", "node", "edge"])
def test_every_init_at_every_site_kind_gives_actions_that_apply(init, kind):
    x, y = data()
    model = dagrow.compile(SPEC, dtype=torch.float64, seed=4)
    sites = [s for s in enumerate_sites(model.spec, include_unsupported=False) if s.kind == kind]
    assert sites
    stats = measure(model, [(x, y)], "mse", sites=sites)
    for p in propose_all(stats, sites, init, 2, weights=model.state_dict()):
        actions = proposal_actions(p, model.spec, 0.5)
        if p.skipped or (p.neurons == 0 and p.edge_weight is None):
            continue
        assert actions, (init, p.site.id)
        spec2, w2 = replay(model.spec, model.state_dict(), actions)
        grown = dagrow.compile(spec2, w2, dtype=torch.float64)
        assert grown(x).shape == y.shape


def test_site_actions_cover_every_site_kind():
    kinds = {s.kind for s in enumerate_sites(dagrow.load_spec(SPEC))}
    assert kinds <= set(SITE_ACTIONS.names())


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_saves_and_restores_its_state(name):
    schedule = SCHEDULES.get(name)(growths=4)
    schedule.due()
    schedule.done(1, 1)
    state = json.loads(json.dumps(schedule.state_dict()))
    again = SCHEDULES.get(name)(growths=4)
    again.load_state_dict(state)
    assert again.state_dict() == schedule.state_dict()
    with pytest.raises(ValueError, match="unknown fields"):
        again.load_state_dict({"bogus": 1})


def test_rounds_cool_down_after_growth_and_stop_on_patience():
    schedule = SCHEDULES.get("rounds")(cooldown=1, patience=2, max_rounds=50)
    assert schedule.due()
    schedule.done(2, 2)
    assert not schedule.due()  # cooldown
    assert schedule.due()
    schedule.done(1, 0)
    assert schedule.due()
    schedule.done(1, 0)
    assert schedule.finished and "2 evaluations in a row" in schedule.reason


def test_rounds_stop_once_rounds_that_grew_no_longer_lower_the_validation_loss():
    """val_patience 2, val_min_delta 0.1: a loss counts as better only 10% below the best; growth
    stops at the first evaluation that is not better after two rounds that grew since the best."""
    schedule = SCHEDULES.get("rounds")(cooldown=0, patience=5, val_patience=2, val_min_delta=0.1)
    figures = []
    for loss, added in [(1.0, 1), (0.95, 1), (0.85, 1), (0.8, 2)]:
        assert schedule.due()
        figures.append(schedule.validated(loss))
        assert not schedule.finished
        schedule.done(added, added)
    # 0.95 is within 10% of 1.0 (one round grew since), 0.85 is better (the count starts again)
    assert [f["best_val_loss"] for f in figures] == [1.0, 1.0, 0.85, 0.85]
    assert [f["growths_since_best_val"] for f in figures] == [0, 1, 0, 1]
    assert schedule.due()
    schedule.validated(0.8)  # 0.8 > 0.85 - 0.085, after the two rounds that grew since 0.85
    assert schedule.finished and "after 2 rounds that grew (val_patience 2)" in schedule.reason
    assert "loss 0.8 is not below its best 0.85 by more than val_min_delta = 0.1" in schedule.reason
    # a non-finite loss is never better; rounds that added nothing do not count
    quiet = SCHEDULES.get("rounds")(cooldown=0, patience=9, val_patience=1)
    for loss, added in [(1.0, 0), (float("nan"), 0), (1.0, 0), (0.5, 1)]:
        assert quiet.due()
        quiet.validated(loss)
        assert not quiet.finished
        quiet.done(1, added)
    assert quiet.due() and quiet.validated(0.499)["best_val_loss"] == 0.5 and quiet.finished  # 1% below: no
    # val_patience 0: SENN's rule alone
    off = SCHEDULES.get("rounds")(cooldown=0, val_patience=0)
    for _ in range(5):
        assert off.due() and off.validated(1.0) is None
        off.done(1, 1)
    assert not off.finished and not off.uses_validation
    again = SCHEDULES.get("rounds")()
    again.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    assert (again.val_best, again.val_growths, again.reason) == (0.85, 2, schedule.reason)
    for bad, message in [
        ({"val_patience": -1}, "val_patience must be a whole number >= 0"),
        ({"val_patience": 1.5}, "val_patience must be a whole number >= 0"),
        ({"val_min_delta": 1.0}, r"val_min_delta must be a fraction in \[0, 1\)"),
        ({"val_min_delta": float("nan")}, r"val_min_delta must be a fraction in \[0, 1\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            SCHEDULES.get("rounds")(**bad)


def test_a_budget_without_a_growth_count_stops_when_nothing_fits():
    x, y = data()
    grower = dagrow.Grower(SPEC, loss="mse", dtype=torch.float64, growths=None, max_params=75, neurons=2)
    steps = 0
    while not grower.finished and steps < 20:
        grower.step(grower.model, None, (x, y))
        steps += 1
    assert grower.finished and steps < 20
    assert dagrow.num_params(grower.model.spec) <= 75
    assert "max_params" in grower.schedule.reason


def test_adafactor_is_refused_before_its_first_step():
    if not hasattr(torch.optim, "Adafactor"):
        pytest.skip("this torch has no Adafactor")
    x, y = data()
    grower = dagrow.Grower(SPEC, loss="mse", growths=1)
    with pytest.raises(OptimizerError, match="Adafactor"):
        grower.step(grower.model, torch.optim.Adafactor(grower.model.parameters()), (x, y))
