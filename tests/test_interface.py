"""What a person sees: the sites table, drawings, run outputs, `dagrow tasks`, help and spellings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import dagrow
from dagrow.cli import app
from dagrow.drawing import generations, grown_parts, layout, to_dot, write_png
from dagrow.registry import Registry
from dagrow.run_plots import metrics_csv, write_growth_png
from dagrow.spec import parse_spec
from dagrow.tasks import make_task, parse_task_options, task_card

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "specs" / "mlp_sin50.yaml"
SKIP = ROOT / "specs" / "dag_skip.yaml"


def run(*args: str | Path, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert (result.exit_code == 0) == ok, (result.stdout, result.stderr)
    return result


def _png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000


# sites ----------------------------------------------------------------------------------------------


def test_sites_table_counts_only_growable_sites_ranked_and_lists_skipped_ones_with_reasons():
    out = run("sites", MLP, "--task", "sin50").stdout
    assert "mlp-sin50: 2 growable sites (of 6)" in out
    rows = [line for line in out.splitlines() if line.startswith("│ ")]
    growable = [r.split("│")[2].strip() for r in rows if r.split("│")[1].strip() in ("1", "2")]
    assert growable == ["widen:h2", "widen:h1"]  # first-order 0.0248 > 0.0049
    assert "4 skipped sites" in out
    assert "widen:out" in out and "not supported: out is an output" in out
    assert "thresholds: numerical 1e-10" in out and "{" not in out.split("thresholds:")[1]
    by_lambda = run("sites", MLP, "--task", "sin50", "--strategy", "max_eigenvalue", "--json").stdout
    assert json.loads(by_lambda)["growable"] == ["widen:h1", "widen:h2"]  # lambda_1 0.0728 > 0.0214


def test_a_deepen_site_is_not_advised_to_deepen(tmp_path):
    spec = tmp_path / "deep.yaml"
    text = MLP.read_text().split("growth:")[0] + "growth: {widen: all, deepen: all}\n"
    spec.write_text(text)
    doc = json.loads(run("sites", spec, "--task", "sin50", "--json").stdout)
    deepen = [s for s in doc["sites"] if s["site"].startswith("deepen:")]
    assert deepen and all("deepen the edge" not in (s["skipped"] or "") for s in deepen)


# drawings -------------------------------------------------------------------------------------------


def test_layers_are_topological_generations_and_skip_edges_get_waypoints():
    spec = dagrow.load_spec(SKIP)
    assert generations(spec) == [["x"], ["a", "b"], ["m"], ["out"]]
    lay = layout(spec)
    assert [layer for layer, _ in lay.routes[("x", "out")]] == [1, 2]  # one waypoint per crossed layer
    # the waypoints take their own slots: the skip edge never passes through a or b or m
    for layer, slot in lay.routes[("x", "out")]:
        assert all(lay.pos[v] != (layer, slot) for v in spec.nodes)


def test_dot_ranks_by_generation_and_highlights_growth(tmp_path):
    spec = dagrow.load_spec(SKIP)
    dot = to_dot(spec)
    assert '{ rank=same; "a"; "b"; }' in dot and "rankdir=LR" in dot
    grown = spec.model_copy(
        update={"nodes": {**spec.nodes, "a": spec.nodes["a"].model_copy(update={"width": 9})}}
    )
    assert grown_parts(grown, spec) == (set(), set(), {"a"})
    assert "width 4 -> 9" in to_dot(grown, spec) and "#e4670c" in to_dot(grown, spec)
    _png(write_png(grown, tmp_path / "grown.png", spec))


def test_a_large_graph_draws(tmp_path):
    lines = ["version: 1", "name: wide", "inputs:", "  x: {shape: [4]}", "nodes:"]
    lines += [f"  n{i}: {{width: 3, activation: relu}}" for i in range(60)] + ["  out: {width: 2}", "edges:"]
    lines += [f"  - {{from: {'x' if i < 5 else f'n{i - 5}'}, to: n{i}}}" for i in range(60)]
    lines += [f"  - {{from: n{i}, to: out}}" for i in range(55, 60)] + ["outputs: [out]"]
    spec = parse_spec(yaml.safe_load("\n".join(lines)))
    _png(write_png(spec, tmp_path / "wide.png"))


# run outputs ----------------------------------------------------------------------------------------


def test_grow_writes_metrics_csv_growth_png_and_a_highlighted_architecture(tmp_path):
    out = tmp_path / "run"
    result = run("grow", MLP, "--task", "sin50", "--growths", "2", "--every", "20", "--out", out, "-q")
    assert "metrics.csv, growth.png" in result.stdout
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows] == [h["event"] for h in history]
    assert rows[0]["params"] == str(history[0]["params"]) and "lambdas" not in rows[0]
    _png(out / "growth.png")
    _png(out / "architecture.png")
    assert "width 4 -> " in (out / "architecture.dot").read_text()


def test_metrics_csv_and_growth_png_from_a_history(tmp_path):
    history = [
        {"event": "growth", "step": 10, "params": 20, "train_loss": 1.0, "val_loss": 1.1, "val_mse": 0.5,
         "actions": ["add_neurons(h, +1)"], "lambdas": [0.1]},
        {"event": "rollback", "step": 20, "params": 20, "train_loss": 0.9},
        {"event": "end", "step": 30, "params": 20, "val_loss": 0.8, "val_mse": 0.4, "test_mse": 0.45},
    ]  # fmt: skip
    text = metrics_csv(history)
    assert text.splitlines()[0].startswith("event,step,params,train_loss,val_loss")
    assert len(text.splitlines()) == 4
    _png(write_growth_png(history, tmp_path / "g.png", start_params=12))


def test_log_tensorboard_says_what_to_install_when_missing(tmp_path):
    pytest.importorskip("matplotlib")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    result = run("grow", MLP, "--task", "sin50", "--log", "tensorboard", "--out", tmp_path / "r", ok=False)
    assert (
        result.stderr.strip()
        == "error: --log tensorboard needs tensorboard: pip install 'dagrow[tensorboard]'"
    )
    assert not (tmp_path / "r").exists()


# tasks ----------------------------------------------------------------------------------------------


def test_tasks_lists_shapes_sizes_and_fitting_specs():
    out = run("tasks", "sin50", "digits", "--specs", ROOT / "specs").stdout
    assert out.splitlines()[:4] == [
        "sin50: 10 classes: y = argmax_k sin(k s), s = sum(x) / sqrt(50), x ~ N(0, I_50) (TINY slides).",
        "  input [50] -> 10 classes; classification (cross_entropy loss, accuracy)",
        "  train/val/test 14000/3000/3000; options: scaled=True",
        "  specs that fit: mlp_sin50.yaml",
    ]
    assert "  specs that fit: conv_digits.yaml" in out
    one = run("tasks", "regression1d").stdout
    assert "input [1] -> 1 target;" in one


def test_task_options_from_the_cli_are_saved_for_resume(tmp_path):
    assert parse_task_options(["in_dim=8", "hidden=3"], "teacher_student") == {"in_dim": 8, "hidden": 3}
    assert task_card("teacher_student", in_dim=8).input_shape == (8,)
    with pytest.raises(ValueError, match="did you mean 'in_dim'"):
        parse_task_options(["in_dm=8"], "teacher_student")
    spec = tmp_path / "ts.yaml"
    spec.write_text(
        "version: 1\nname: ts\ninputs:\n  x: {shape: [8]}\nnodes:\n  h: {width: 3, activation: relu}\n"
        "  out: {width: 10}\nedges:\n  - {from: x, to: h}\n  - {from: h, to: out}\noutputs: [out]\n"
    )
    out = tmp_path / "run"
    args = ("grow", spec, "--task", "teacher-student", "--task-option", "in_dim=8", "--every", "5")
    run(*args, "--growths", "1", "--out", out, "-q")
    meta = dagrow.checkpoint.RunDirectory(out).load().meta
    assert meta["source"]["task_options"] == {"in_dim": 8}
    assert "finished" in run("grow", "--resume", out).stdout


# help and names -------------------------------------------------------------------------------------


def test_version_and_short_help():
    assert run("--version").stdout == f"dagrow {dagrow.__version__}\n"
    text = run("grow", "-h").stdout
    for panel in ("What to grow on", "Where it goes", "Growth", "Training", "SENN (--strategy natural)"):
        assert panel in text
    from dagrow.cli_growth import grow_command
    from dagrow.growth.inits import INITS

    init = grow_command.__signature__.parameters["init"].annotation.__metadata__[0]
    assert INITS.help() in init.help  # each init described, not "random: random"


def test_other_spelling_of_hyphens_and_underscores_is_accepted_where_unambiguous():
    reg: Registry[int] = Registry("thing")
    reg.add("teacher_student", 1)
    reg.add("sin-50", 2)
    assert reg.check("teacher-student") == "teacher_student" and reg.check("sin_50") == "sin-50"
    assert make_task("teacher-student", n=20).name == "teacher_student"
    err = run("validate", MLP).stdout
    assert "1 input," in err
    result = run("grow", MLP, "--task", "sin50", "--init", "TINY", "--out", "x", ok=False)
    assert result.stderr.count("error") == 1 and "did you mean 'tiny'" in result.stderr


def test_log_tensorboard_writes_the_history_as_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "r"
    run(
        "grow",
        MLP,
        "--task",
        "sin50",
        "--growths",
        "2",
        "--every",
        "10",
        "--log",
        "tensorboard",
        "--out",
        out,
        "-q",
    )
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "params", "loss/test", "metric/test"} <= tags
    assert [e.step for e in events.Scalars("loss/train")] == [10, 20]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert events.Scalars("params")[-1].value == history[-1]["params"]
