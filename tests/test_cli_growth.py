"""`dagrow sites` and `dagrow grow`: tables, JSON, output files, resume, and the error paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dagrow import compile, load, load_spec, save
from dagrow.cli import app

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "specs" / "mlp_sin50.yaml"  # 50 -> 4 -> 4 -> 10


def run(*args: str | Path, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1, result.output
        assert result.stderr.strip(), "an error must say something on stderr"
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """300 samples that fit the MLP spec: 50 features, 10 classes."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 50)).astype(np.float32)
    y = (np.abs(x[:, :10]).argmax(1)).astype(np.int64)
    path = tmp_path_factory.mktemp("data") / "train.npz"
    np.savez(path, x=x, y=y)
    return path


# ---------------------------------------------------------------------------------------------
# sites
# ---------------------------------------------------------------------------------------------

JSON_KEYS = {
    "site",
    "kind",
    "lambdas",
    "first_order_improvement",
    "bottleneck",
    "delta_w_norm",
    "params_added",
}


def test_sites_json_lists_every_site_with_its_figures(data):
    doc = json.loads(run("sites", MLP, "--data", data, "--json", "--neurons", "2").stdout)
    ids = [s["site"] for s in doc["sites"]]
    assert {"widen:h1", "widen:h2", "node:x->h1", "node:h2->out"} <= set(ids)
    assert doc["samples"] > 0 and doc["neurons"] == 2 and doc["init"] == "tiny"
    for entry in doc["sites"]:
        assert JSON_KEYS <= set(entry)
        lams = entry["lambdas"]
        assert lams == sorted(lams, reverse=True) and all(v >= 0 for v in lams)
        assert entry["bottleneck"] >= 0
        assert (entry["params_added"] > 0) == bool(lams)  # no direction above the thresholds: no neuron
    widen = next(s for s in doc["sites"] if s["site"] == "widen:h1")
    assert widen["params_added"] == 2 * (50 + 1 + 4)  # fan-in with bias, fan-out to h2


def test_sites_table_names_the_sites_and_the_thresholds(data):
    out = run("sites", MLP, "--data", data, "--init", "gradmax").stdout
    assert "widen:h1" in out and "node:h1->h2" in out and "thresholds" in out


def test_warnings_are_one_line_on_stderr(data):
    result = run("sites", MLP, "--data", data, "--init", "gradmax")
    assert result.stderr.startswith("warning: gradmax needs sigma(0) = 0")
    assert "UserWarning" not in result.stderr and ".py:" not in result.stderr


def test_sites_of_a_bundle_use_its_weights(data, tmp_path):
    model = compile(MLP, seed=3)
    bundle = save(model, tmp_path / "m.safetensors")
    from_bundle = json.loads(run("sites", bundle, "--data", data, "--json").stdout)
    fresh = json.loads(run("sites", MLP, "--data", data, "--json", "--seed", "4").stdout)
    assert from_bundle["loss"] != fresh["loss"]
    again = json.loads(run("sites", bundle, "--data", data, "--json").stdout)
    assert again["loss"] == from_bundle["loss"]


# ---------------------------------------------------------------------------------------------
# grow
# ---------------------------------------------------------------------------------------------

GROW = ["--every", "5", "--growth-batch", "128", "--batch-size", "32", "-q"]


def test_grow_writes_the_grown_model(data, tmp_path):
    out = tmp_path / "run"
    result = run("grow", MLP, "--data", data, "--growths", "2", *GROW, "--out", out)
    assert "parameters: 274 ->" in result.stdout
    for name in (
        "spec.yaml",
        "model.safetensors",
        "history.jsonl",
        "architecture.dot",
        "checkpoint.safetensors",
    ):
        assert (out / name).is_file(), name
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    growths = [h for h in history if h["event"] in ("growth", "rollback")]
    assert len(growths) == 2 and history[-1]["event"] == "end"
    assert history[-1]["train_loss"] > 0  # the final steps' training loss, plotted with the rounds'
    model = load(out / "model.safetensors")
    assert model.spec == load_spec(out / "spec.yaml")  # the YAML beside the bundle is the grown spec
    assert history[-1]["params"] == sum(p.numel() for p in model.parameters())
    again = run("grow", "--resume", out)  # a finished run: nothing to do
    assert "finished" in again.stdout


@pytest.mark.parametrize(
    "args, says",
    [
        (["grow", "SPEC", "--data", "DATA"], "give a SPEC_OR_BUNDLE and --out DIR"),
        (["grow", "SPEC", "--data", "DATA", "--out", "OUT", "--strategy", "best"], "unknown strategy 'best'"),
        (["grow", "SPEC", "--data", "DATA", "--out", "OUT", "--init", "tinny"], "unknown init 'tinny'"),
        (
            ["grow", "SPEC", "--data", "DATA", "--out", "OUT", "--optimizer", "lbfgs"],
            "unknown optimizer 'lbfgs'",
        ),
        (
            ["grow", "SPEC", "--data", "DATA", "--out", "OUT", "--statistics", "all"],
            "unknown statistics 'all'",
        ),
        (
            [
                "grow",
                "SPEC",
                "--data",
                "DATA",
                "--out",
                "OUT",
                "--statistics",
                "training",
                "--optimizer",
                "best_update",
            ],
            "statistics=training records the statistics during sgd or adam steps",
        ),
        (["grow", "--resume", "OUT"], "nothing to resume"),
        (["grow", "--resume", "OUT", "--data", "DATA"], "--task-option, --data or --config"),
        (["grow", "SPEC", "--task", "sin50", "--data", "DATA", "--out", "OUT"], "exactly one of --task"),
        (["sites", "SPEC"], "give exactly one of --task NAME or --data FILE"),
        (["sites", "SPEC", "--task", "sin5"], "unknown task 'sin5'"),
        (["sites", "SPEC", "--data", "MISSING"], "no such file"),
        (["sites", "SPEC", "--data", "DATA", "--loss", "hinge"], "unknown loss 'hinge'"),
        (["grow", "SPEC", "--data", "DATA", "--out", "OUT", "--device", "tpu"], "unknown device 'tpu'"),
        (["sites", "SPEC", "--data", "DATA", "--device", "gpu0"], "unknown device 'gpu0'"),
        (
            ["sites", "SPEC", "--task", "moons"],
            "mlp_sin50.yaml: spec 'mlp-sin50': input 'x' has shape [50] but task 'moons' gives samples of "
            "shape [2]",
        ),
        (["grow", "SPEC", "--task", "regression1d", "--out", "OUT"], "input 'x' has shape [50] but task"),
    ],
)
def test_bad_growth_flags_exit_1(args, says, data, tmp_path):
    subst = {"SPEC": MLP, "DATA": data, "OUT": tmp_path / "out", "MISSING": tmp_path / "none.npz"}
    result = run(*[subst.get(a, a) for a in args], ok=False)
    assert says in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("command", ["grow", "sites"])
def test_a_cuda_device_without_cuda_is_a_clear_error(command, data, tmp_path):
    extra = ["--out", tmp_path / "out"] if command == "grow" else []
    result = run(command, MLP, "--data", data, "--device", "cuda", *extra, ok=False)
    assert "device 'cuda' is not available" in result.stderr
    assert not (tmp_path / "out").exists()
