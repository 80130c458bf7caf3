"""`dagrow compare`: the runner (rows, resume, determinism, parallel jobs), its outputs (results.csv,
summary.md, plots) and the presets' quick versions with their directional claims."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from dagrow.cli import app
from dagrow.compare import Experiment, TaskSource, run_experiment, run_path
from dagrow.loop import GrowthConfig
from dagrow.presets import PRESETS, make_preset, mlp
from dagrow.results import (
    COLUMNS,
    common_range,
    curve,
    interpolate,
    mean_over,
    paired_area,
    paired_claim,
    paired_final,
    read_results,
)

GROW = {"widen": "all", "new_nodes": "none"}


def tiny_experiment(**overrides) -> Experiment:
    spec = mlp("r1", 1, [1], 1, growth=GROW)
    config = GrowthConfig(growths=2, every=5, batch_size=64, growth_batch=256, lr=1e-2)
    kwargs = {
        "strategies": ["naive", "amplitude_factor"],
        "inits": ["tiny"],
        "seeds": 2,
        "statics": {"w4": mlp("w4", 1, [4], 1)},
    } | overrides
    return Experiment("tiny", spec, TaskSource("regression1d"), config, **kwargs)


def spec_args(seeds: int, growths: int, every: int) -> list[str]:
    """`dagrow compare SPEC` options: regression1d, naive x (tiny, random)."""
    return [
        "--task",
        "regression1d",
        "--strategies",
        "naive",
        "--inits",
        "tiny,random",
        "--seeds",
        str(seeds),
        "--growths",
        str(growths),
        "--every",
        str(every),
    ]


def strip_seconds(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "decision_seconds")} for r in rows]


def cli(*args, ok=True):
    result = CliRunner().invoke(app, ["compare", *(str(a) for a in args)])
    assert "Traceback" not in result.output
    assert (result.exit_code == 0) == ok, result.output
    return result


def test_rows_outputs_and_resume(tmp_path):
    exp = tiny_experiment()
    done: list[tuple[str, float | None]] = []
    rows = run_experiment(exp, tmp_path, on_done=lambda k, s: done.append((k.id, s)))
    assert len(done) == 6 and all(s is not None for _, s in done)  # 2 strategies x 2 seeds + 2 static
    with open(tmp_path / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        table = list(reader)
    assert len(table) == len(rows)
    for key in exp.keys():
        run = [r for r in rows if r["run"] == key.id]
        assert run[0]["event"] == "start" and run[0]["step"] == 0 and run[-1]["event"] == "end"
        assert run[-1]["step"] == 15  # 2 growths x 5 steps + final 5
        assert all(r["test_metric"] != "" for r in run if r["event"] != "skipped")
        if key.kind == "grow":
            assert len(run) == 4  # start, two growths, end
            assert [r["parameters"] for r in run] == sorted(r["parameters"] for r in run)
    summary = (tmp_path / "summary.md").read_text()
    assert "## At the end" in summary and "naive / tiny" in summary and "static w4" in summary
    assert "## Test mse at matched parameter budgets" in summary
    for png in ("metric_vs_params.png", "loss_vs_steps.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob("*.tmp"))

    # run again: nothing redone; a missing, a half-written and a stale run file are redone
    again: list[tuple[str, float | None]] = []
    assert strip_seconds(
        run_experiment(exp, tmp_path, on_done=lambda k, s: again.append((k.id, s)))
    ) == strip_seconds(rows)
    assert all(s is None for _, s in again)
    keys = exp.keys()
    run_path(tmp_path, keys[0]).unlink()
    run_path(tmp_path, keys[1]).write_text('{"fingerprint": ')
    stale = json.loads(run_path(tmp_path, keys[2]).read_text())
    run_path(tmp_path, keys[2]).write_text(json.dumps(stale | {"fingerprint": "other settings"}))
    redone: list[str] = []
    rows2 = run_experiment(exp, tmp_path, on_done=lambda k, s: redone.append(k.id) if s is not None else None)
    assert redone == [k.id for k in keys[:3]]
    assert strip_seconds(rows2) == strip_seconds(rows)  # each run is deterministic for its seed
    assert strip_seconds(read_results(tmp_path / "results.csv")) == strip_seconds(rows2)  # csv round trip


def test_parallel_jobs_match_serial(tmp_path):
    exp = tiny_experiment(strategies=["naive"], seeds=2, statics={})
    serial = run_experiment(exp, tmp_path / "serial")
    parallel = run_experiment(exp, tmp_path / "parallel", jobs=2)
    assert strip_seconds(parallel) == strip_seconds(serial)


def test_bad_input_one_line_exit_1(tmp_path):
    spec = tmp_path / "r1.yaml"
    spec.write_text(mlp("r1", 1, [1], 1).to_yaml())
    cases = [
        ("--preset", "nope"),
        ("--preset", "regression1d", "--strategies", "nope"),
        ("--preset", "regression1d", "--inits", "nope"),
        (spec, "--preset", "regression1d"),
        ("--preset", "regression1d", "--jobs", "0"),
        (spec,),
        (spec, "--task", "nope"),
        ("--preset", "regression1d", "--task", "regression1d"),
        ("--preset", "narrow", "--strategies", "naive"),
    ]
    for args in cases:
        result = cli(*args, "--out", tmp_path / "out", ok=False)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, result.output)
    assert "nope" in cli("--preset", "nope", "--out", tmp_path, ok=False).output
    assert "sin50-depth" in cli("--preset", "nope", "--out", tmp_path, ok=False).output


def test_spec_mode_cli(tmp_path):
    spec = tmp_path / "r1.yaml"
    spec.write_text(mlp("r1", 1, [1], 1, growth=GROW).to_yaml())
    static = tmp_path / "wide.yaml"
    static.write_text(mlp("wide", 1, [8], 1).to_yaml())
    out = tmp_path / "out"
    cli(spec, *spec_args(seeds=1, growths=1, every=3), "--static", static, "--out", out)
    rows = read_results(out / "results.csv")
    assert {r["run"] for r in rows} == {"grow-naive-tiny-s0", "grow-naive-random-s0", "static-wide-s0"}


# every preset's quick version: shapes, and the claims that hold in what was measured (docs/results.md
# lists every claim, including those that do not hold)
HOLDS = {
    "regression1d": ["the training loss falls with each TINY neuron", "the grown model ends below"],
    "teacher-student": ["gradmax ends below the small static student"],
    "sin50-init": ["TINY ends below random in training loss"],
    "sin50-depth": ["no applied TINY growth raises the loss"],
    "digits": ["growth beats the static starting net"],
    "narrow": ["mirrored initialisation outputs 0"],
    "senn": [],
    "digits-cnn": [],
}


SLOW_QUICK = {"digits", "sin50-depth", "senn", "digits-cnn"}  # 10-25 s each on the shared 2-core machine


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_QUICK else n for n in sorted(PRESETS)]
)
def test_preset_quick(name, tmp_path):
    exp = make_preset(name, quick=True)
    rows = run_experiment(exp, tmp_path)
    runs = {r["run"] for r in rows}
    assert runs == {k.id for k in exp.keys()}
    for run in runs:
        mine = [r for r in rows if r["run"] == run]
        assert mine[0]["event"] == "start" and mine[-1]["event"] == "end"
        assert all(r["metric"] == mine[0]["metric"] for r in mine)
    assert (tmp_path / "summary.md").read_text().startswith(f"# {name}")
    assert (tmp_path / "metric_vs_params.png").is_file() and (tmp_path / "loss_vs_steps.png").is_file()
    claims = exp.claims(rows) if exp.claims else []
    for start in HOLDS[name]:
        line = next(c for c in claims if c.startswith(start))
        assert ": holds" in line, line


@pytest.mark.slow
def test_killed_command_resumes(tmp_path):
    """Kill `dagrow compare` once its first run is written; the rerun keeps that run and does the rest."""
    spec = tmp_path / "r1.yaml"
    spec.write_text(mlp("r1", 1, [1], 1, growth=GROW).to_yaml())
    out = tmp_path / "out"
    args = [sys.executable, "-m", "dagrow", "compare", str(spec), *spec_args(seeds=2, growths=3, every=200)]
    args += ["--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "runs").glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    finished = {p.name for p in (out / "runs").glob("*.json")}
    assert finished and not (out / "results.csv").exists()
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    kept = {line.split(":")[0] + ".json" for line in result.stderr.splitlines() if "already done" in line}
    assert kept == finished
    assert len(read_results(out / "results.csv")) > 0 and len(list((out / "runs").glob("*.json"))) == 4


# --------------------------------------------------------------------------------------------------
# Claims at matched budgets: the area under metric-vs-parameters, paired over seeds (hand-computed)
# --------------------------------------------------------------------------------------------------


def curve_rows(run: str, seed: int, points, **extra) -> list[dict]:
    """Rows of one run with (parameters, test_metric) ``points`` in time order."""
    return [
        {"run": run, "seed": seed, "parameters": p, "test_metric": m, "kind": "grow", **extra}
        for p, m in points
    ]


def test_curve_keeps_the_last_value_at_each_size_and_interpolates():
    run = curve_rows("a", 0, [(10, 0.0), (10, 0.2), (20, 0.4), (40, "")])
    assert curve(run) == [(10.0, 0.2), (20.0, 0.4)]
    assert interpolate([(10.0, 0.2), (20.0, 0.4)], 12.5) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="outside"):
        interpolate([(10.0, 0.2), (20.0, 0.4)], 25)


def test_mean_over_a_range_is_the_area_divided_by_its_width():
    # (0, 0) - (10, 1) - (30, 1): on [5, 20] the area is (0.5 + 1) / 2 * 5 + 1 * 10 = 13.75
    c = [(0.0, 0.0), (10.0, 1.0), (30.0, 1.0)]
    assert mean_over(c, 5, 20) == pytest.approx(13.75 / 15)
    assert mean_over(c, 0, 30) == pytest.approx((5 + 20) / 30)
    assert mean_over(c, 5, 5) == pytest.approx(0.5)
    assert common_range([c, [(8.0, 0.0), (25.0, 1.0)]]) == (8.0, 25.0)
    assert common_range([c, [(40.0, 0.0), (50.0, 1.0)]]) is None


def test_paired_area_and_statistics_against_hand_computed_values():
    # seed 0: a = 0.5 flat, b rises 0 -> 1 on [0, 20]; seed 1: a rises 0.2 -> 0.6 on [0, 10], b = 0.3
    # common range: [max of the first sizes (a0's 2), min of the last sizes (a1's 10)]
    rows = (
        curve_rows("a0", 0, [(2, 0.5), (20, 0.5)], strategy="a")
        + curve_rows("b0", 0, [(0, 0.0), (20, 1.0)], strategy="b")
        + curve_rows("a1", 1, [(0, 0.2), (10, 0.6)], strategy="a")
        + curve_rows("b1", 1, [(0, 0.3), (30, 0.3)], strategy="b")
    )
    p = paired_area(rows, "test_metric", {"strategy": "a"}, {"strategy": "b"}, lower=False)
    assert p.where == "2..10 parameters"
    # on [2, 10]: a0 = 0.5; b0 = mean of 0.1 .. 0.5 = 0.3; a1 = mean of 0.28 .. 0.6 = 0.44; b1 = 0.3
    assert p.a == pytest.approx({0: 0.5, 1: 0.44}) and p.b == pytest.approx({0: 0.3, 1: 0.3})
    d = [0.2, 0.14]
    assert p.differences == pytest.approx(d)
    assert p.mean_difference == pytest.approx(0.17)
    sd = ((0.03**2 + 0.03**2) / 1) ** 0.5
    assert p.standard_error == pytest.approx(sd / 2**0.5)
    assert p.wins == 2 and p.holds and p.separated  # 0.17 > 2 * 0.03
    line = paired_claim("a is ahead of b", p, "mean test accuracy")
    assert line.startswith("a is ahead of b: holds (mean test accuracy over 2..10 parameters: 0.47 vs 0.3;")
    assert "paired difference +0.17 ± 0.03 (s.e.)" in line and "better in 2 of 2 seeds" in line
    reverse = paired_area(rows, "test_metric", {"strategy": "a"}, {"strategy": "b"}, lower=True)
    assert not reverse.holds and reverse.wins == 0
    assert "does NOT hold" in paired_claim("a is below b", reverse, "x")


def test_paired_final_pairs_by_seed_and_counts_wins():
    rows = (
        curve_rows("a0", 0, [(1, 0.9), (2, 0.1)], strategy="a")
        + curve_rows("b0", 0, [(1, 0.9), (2, 0.3)], strategy="b")
        + curve_rows("a1", 1, [(1, 0.9), (2, 0.5)], strategy="a")
        + curve_rows("b1", 1, [(1, 0.9), (2, 0.4)], strategy="b")
        + curve_rows("a2", 2, [(1, 0.9), (2, 0.2)], strategy="a")  # no b for seed 2: not paired
    )
    p = paired_final(rows, "test_metric", {"strategy": "a"}, {"strategy": "b"}, lower=True)
    assert p.seeds == [0, 1] and p.differences == pytest.approx([-0.2, 0.1])
    assert p.wins == 1 and p.holds and not p.separated  # mean -0.05, s.e. 0.15
    assert p.standard_error == pytest.approx(((0.15**2 * 2) ** 0.5) / 2**0.5)
    assert "within 2 s.e. of 0" in p.describe() and "better in 1 of 2 seeds" in p.describe()
    assert paired_claim("x", paired_final([], "test_metric", {}, {}, lower=True), "y") == (
        "x: not measured (runs missing)"
    )


def test_a_per_seed_task_source_draws_a_new_task_for_every_run_seed():
    fixed, drawn = TaskSource("teacher_student", n=1428), TaskSource("teacher_student", n=1428, per_seed=True)
    assert len(drawn.make(3).train.x) == 1000  # 70 % of 1,428
    assert torch.equal(fixed.make(0).extras["teacher_w1"], fixed.make(5).extras["teacher_w1"])
    assert torch.equal(drawn.make(0).extras["teacher_w1"], fixed.make(0).extras["teacher_w1"])
    assert not torch.equal(drawn.make(1).extras["teacher_w1"], drawn.make(0).extras["teacher_w1"])
    assert "per run seed" in drawn.describe() and "per run seed" not in fixed.describe()
