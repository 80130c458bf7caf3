"""Contract tests over every registered preset: it builds in quick mode, its experiment checks, and its
claims function reads an empty or a tiny row list without crashing; an unknown preset name gets the
registry's "did you mean" message; the narrow preset's own trainer keeps its constraint."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
from typer.testing import CliRunner

from dagrow.cli import app
from dagrow.compare import Experiment, make_row
from dagrow.presets import PRESETS, list_presets, make_preset
from dagrow.presets.narrow import NarrowNet, NarrowSettings, ProjectedSGD, half_mse, narrow_data
from dagrow.registry import UnknownName
from dagrow.training import train_steps


def tiny_rows(exp: Experiment) -> list[dict]:
    """A start, a growth and an end row for every run of ``exp`` (made-up numbers)."""
    started = time.perf_counter()
    rows = []
    for i, key in enumerate(exp.keys()):
        numbers = {c: 0.5 + 0.01 * i for c in ("train_loss", "val_loss", "test_loss")}
        numbers |= {c: 0.5 - 0.01 * i for c in ("train_metric", "val_metric", "test_metric")}
        rows.append(make_row(key, "accuracy", started, event="start", step=0, parameters=10, **numbers))
        if key.kind == "grow":
            growth = {"loss_before": 0.5, "loss_after": 0.4}
            rows.append(
                make_row(key, "accuracy", started, event="growth", step=1, parameters=12, **growth, **numbers)
            )
        rows.append(make_row(key, "accuracy", started, event="end", step=2, parameters=12, **numbers))
    return rows


@pytest.mark.parametrize("name", list_presets())
def test_preset_contract(name):
    preset = PRESETS.get(name)
    assert preset.name == name and preset.summary and preset.source
    exp = make_preset(name, quick=True)
    assert isinstance(exp, Experiment) and exp.name == name
    assert exp.description.startswith(preset.summary) and exp.description.endswith("(quick version)")
    exp.check()
    assert exp.keys() and exp.seeds == 1
    assert exp.claims is not None, "every preset states its claims"
    for rows in ([], tiny_rows(exp)):
        lines = exp.claims(rows)
        assert lines and all(isinstance(line, str) and line for line in lines)
    assert make_preset(name).seeds >= exp.seeds  # the full version builds too


def test_registry_order_and_names():
    expected = [
        "regression1d",
        "sin50-depth",
        "sin50-init",
        "teacher-student",
        "digits",
        "narrow",
        "senn",
        "digits-cnn",
    ]
    assert list_presets() == expected == list(PRESETS)


def test_unknown_preset_did_you_mean():
    # the other spelling of hyphens and underscores names the preset
    assert make_preset("teacher_student").name == make_preset("teacher-student").name
    with pytest.raises(
        UnknownName, match=r"unknown preset 'teacher-studnet' \(did you mean 'teacher-student'\?\)"
    ):
        make_preset("teacher-studnet")
    result = CliRunner().invoke(app, ["compare", "--preset", "teacher-studnet", "--out", "unused"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        "error: unknown preset 'teacher-studnet' (did you mean 'teacher-student'?); expected one of: "
        + ", ".join(list_presets())
    ]


def test_narrow_mirrored_start_and_projection():
    s = NarrowSettings(n=30, d=5, steps=20, every=10, lr=1.0, eps=0.3)
    x, y, _, _ = narrow_data(s)
    net = NarrowNet(s, "mirrored", seed=1)
    assert torch.equal(net(x), torch.zeros(s.n, dtype=torch.float64))  # mirrored pairs cancel
    w0 = net.w.detach().clone()
    loss = train_steps(net, ProjectedSGD(net.w, net.v, s.lr, s.eps), itertools.repeat((x, y)), half_mse, 20)
    assert 0 < loss < 0.5
    assert float((net.w.detach() - w0).norm()) <= s.eps * (1 + 1e-12)


def test_best_update_needs_a_dag_model():
    s = NarrowSettings(n=10, d=5)
    x, y, _, _ = narrow_data(s)
    with pytest.raises(TypeError, match="needs a DagModel"):
        train_steps(NarrowNet(s, "lecun", 0), None, itertools.repeat((x, y)), half_mse, 1)
