"""The scripts in examples/ run (tiny settings, in a subprocess) and say what they did."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dagrow
from dagrow.sites import enumerate_sites

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str | Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's dagrow, not an installed one
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def check_bundle(out: Path, params: int) -> dagrow.DagModel:
    model = dagrow.load(out / "model.safetensors")
    assert dagrow.load_spec(out / "spec.yaml") == model.spec
    assert dagrow.num_params(model.spec) == params
    return model


def test_grow_sin50(tmp_path):
    text = run_example("grow_sin50.py", "--growths", "2", "--every", "10", "--n", "1000", "--out", tmp_path)
    before, after = map(int, re.search(r"^parameters: (\d+) -> (\d+)$", text, re.M).groups())
    assert before == dagrow.num_params(dagrow.load_spec(ROOT / "specs" / "mlp_sin50.yaml")) == 274
    assert after > before
    sites = re.search(r"^sites grown: (.+)$", text, re.M).group(1).split(", ")
    assert 1 <= len(sites) <= 2
    accuracy = float(re.search(r"^test accuracy: ([\d.]+)$", text, re.M).group(1))
    assert 0.0 <= accuracy <= 1.0
    check_bundle(tmp_path, after)


def test_grow_dag_skip(tmp_path):
    text = run_example("grow_dag_skip.py", "--growths", "2", "--every", "10", "--out", tmp_path)
    spec = dagrow.load_spec(ROOT / "specs" / "dag_skip.yaml")
    site_ids = {s.id for s in enumerate_sites(spec, include_unsupported=False)}
    grown = re.search(r"^sites grown: (.+)$", text, re.M).group(1).split(", ")
    assert 1 <= len(grown) <= 2
    assert grown[0] in site_ids  # the first growth is chosen among the original DAG's sites
    lines = re.findall(r"^growth \d+ at step \d+: (\S+) \((\w+)\)", text, re.M)
    assert [site for site, _ in lines] == grown
    before, after = map(int, re.search(r"^parameters: (\d+) -> (\d+)$", text, re.M).groups())
    assert before == dagrow.num_params(spec) and after > before
    float(re.search(r"^test mse: (\S+)$", text, re.M).group(1))
    check_bundle(tmp_path, after)


def test_ddp_loop_as_one_process():
    """examples/ddp_loop.py without torchrun: a process group of one (tests/test_distributed.py runs 2)."""
    text = run_example("ddp_loop.py", "--rounds", "2", "--steps", "20")
    assert re.search(r"^ranks: 1  parameters: \d+  test accuracy: [\d.]+$", text, re.M), text


def test_own_loop(tmp_path):
    """examples/own_loop.py: a plain loop (DataLoader, AdamW, cosine schedule) grows five times."""
    text = run_example("own_loop.py", "--epochs", "6", "--n", "2000", "--out", tmp_path)
    events = re.findall(r"^epoch (\d+): (\w+) (\S+)", text, re.M)
    assert [int(e) for e, _, _ in events] == [0, 1, 2, 3, 4]  # five growth steps, then the grower is done
    grown = re.search(r"^actions: (.+)$", text, re.M).group(1).split(", add")
    assert 1 <= len(grown) <= 5
    accuracy = float(re.search(r"^test accuracy: ([\d.]+)$", text, re.M).group(1))
    assert 0.0 <= accuracy <= 1.0
    model = dagrow.load(tmp_path / "model.safetensors")
    assert dagrow.num_params(model.spec) > 274
