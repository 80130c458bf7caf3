"""Data-parallel growth over torch.distributed (gloo on CPU): a 2-process run is the 1-process run up
to float rounding, a dead rank stops the others with a message, and the collectives are exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dagrow
from dagrow.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
SPEC = """
version: 1
name: moons-dag
inputs: {x: {shape: [2]}}
nodes:
  h1: {width: 2, activation: tanh}
  h2: {width: 2, activation: tanh}
  out: {width: 2}
edges: [{from: x, to: h1}, {from: h1, to: h2}, {from: h2, to: out}, {from: x, to: h2}]
outputs: [out]
growth: {new_nodes: edges, new_edges: all, new_node_activation: tanh}
"""
ARGS = [
    "--task",
    "moons",
    "--every",
    "12",
    "--batch-size",
    "16",
    "--growth-batch",
    "64",
    "--dtype",
    "float64",
]


def env(rank: int, world: int, port: int) -> dict[str, str]:
    extra = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    extra |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(ROOT)}
    return {**os.environ, **extra}


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_two_processes_grow_as_one(tmp_path):
    spec = tmp_path / "dag.yaml"
    spec.write_text(SPEC)
    one, two = tmp_path / "one", tmp_path / "two"
    naive = ["--strategy", "naive"]  # round robin: every growth at another site, so the order is tested
    cmd = [sys.executable, "-m", "dagrow", "grow", str(spec), *ARGS, *naive, "--growths", "4", "-q"]
    started = subprocess.Popen([*cmd, "--out", str(two), "--nproc", "2"], cwd=ROOT, env=env(0, 1, 0))
    config = dagrow.GrowthConfig(
        strategy="naive", growths=4, every=12, batch_size=16, growth_batch=64, dtype="float64"
    )
    dagrow.grow(dagrow.load_spec(spec), dagrow.make_task("moons", seed=0), config, out=one)
    assert started.wait(timeout=120) == 0
    grown = [[(h["site"], h["event"]) for h in history(d) if h.get("site")] for d in (one, two)]
    assert grown[0] == grown[1] and len(grown[0]) == 4
    assert len({site for site, _ in grown[0]}) >= 3, grown[0]
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == torch.float64
        assert (a[k] - b[k]).norm() <= 1e-9 * a[k].norm(), k


def test_a_killed_rank_stops_the_other_with_its_message(tmp_path):
    spec = tmp_path / "dag.yaml"
    spec.write_text(SPEC)
    out, port, timeout = tmp_path / "run", free_port(), 5
    cmd = [sys.executable, "-m", "dagrow", "grow", str(spec), *ARGS, "--out", str(out), "-q"]
    cmd += ["--growths", "3", "--every", "1000000", "--collective-timeout", str(timeout)]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env(r, 2, port), stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.safetensors").exists() and not (out / "history.jsonl").exists():
            assert time.monotonic() < deadline and procs[0].poll() is None, "rank 0 never started"
            time.sleep(0.1)
        time.sleep(1.0)  # both ranks are training
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = procs[0].wait(timeout=timeout + 30)
        waited = time.monotonic() - killed
        message = procs[0].stderr.read()  # type: ignore[union-attr]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert code == 1, message
    assert "rank 0 of 2" in message and "another rank stopped" in message, message
    assert "Traceback" not in message, message
    assert waited < timeout + 15


@pytest.mark.parametrize("world", [2])
def test_all_reduced_statistics_are_those_of_the_whole_batch(world, tmp_path):
    """Worker processes in tests/distributed_worker.py: the statistics of the shares, all-reduced, equal
    the statistics of the whole batch; the global loss is the whole batch's mean."""
    port = free_port()
    worker = ROOT / "tests" / "distributed_worker.py"
    procs = [
        subprocess.Popen([sys.executable, str(worker), str(tmp_path)], env=env(r, world, port))
        for r in range(world)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * world
    assert (tmp_path / "ok").read_text() == "ok"


@pytest.mark.slow
def test_a_killed_distributed_run_resumes_bit_identical_with_the_same_n(tmp_path):
    """Rank 0 is killed while it writes its third checkpoint; the other rank stops within the
    collective timeout; `--resume DIR --nproc 2` ends exactly as the uninterrupted 2-process run."""
    spec = tmp_path / "dag.yaml"
    spec.write_text(SPEC)
    base = [sys.executable, "-m", "dagrow", "grow", str(spec), *ARGS, "--strategy", "naive", "--growths", "4"]
    base += ["--collective-timeout", "10", "-q", "--nproc", "2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert (
        subprocess.run([*base, "--out", str(whole)], cwd=ROOT, env=env(0, 1, 0), timeout=120).returncode == 0
    )
    faulty = {**env(0, 1, 0), "DAGROW_FAULT": "checkpoint:3"}
    proc = subprocess.run(
        [*base, "--out", str(killed)], cwd=ROOT, env=faulty, timeout=120, capture_output=True
    )
    assert (
        proc.returncode == 1 and b"every rank has stopped" in proc.stderr and b"Traceback" not in proc.stderr
    )
    resume = [sys.executable, "-m", "dagrow", "grow", "--resume", str(killed), "--nproc", "2", "-q"]
    assert subprocess.run(resume, cwd=ROOT, env=env(0, 1, 0), timeout=120).returncode == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "spec.yaml").read_text() == (killed / "spec.yaml").read_text()
    strip = [
        [{k: v for k, v in h.items() if k not in ("seconds", "decision_seconds")} for h in history(d)]
        for d in (whole, killed)
    ]
    assert strip[0] == strip[1]
    assert not list(killed.glob(".*.tmp"))
