"""Run directories: a run killed or interrupted at any moment resumes with `--resume DIR` alone and ends
bit-identical to the uninterrupted run; run files, config files and conflicting flags are handled."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

import dagrow.loop
from dagrow.cli import app

ROOT = Path(__file__).resolve().parents[1]
SPEC = """
version: 1
name: moons-mlp
inputs: {x: {shape: [2]}}
nodes:
  h1: {width: 2, activation: tanh}
  h2: {width: 2, activation: tanh}
  out: {width: 2}
edges: [{from: x, to: h1}, {from: h1, to: h2}, {from: h2, to: out}]
outputs: [out]
growth: {new_nodes: edges, new_node_activation: tanh}
"""
ARGS = ["--task", "moons", "--growths", "4", "--every", "12", "--batch-size", "16", "--growth-batch", "64"]


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "moons.yaml"
    path.write_text(SPEC)
    return path


def cli(*args, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == code, result.output
    return result


def tensors(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def history(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("seconds", None)  # wall times: the fields that differ between runs
        line.pop("decision_seconds", None)
    return lines


def assert_same_run(out: Path, reference: Path) -> None:
    assert (out / "spec.yaml").read_text() == (reference / "spec.yaml").read_text()
    got, want = tensors(out / "model.safetensors"), tensors(reference / "model.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].equal(want[k]), k  # bit-identical
    lines = history(out)
    assert lines == history(reference)
    steps = [h["step"] for h in lines]
    assert steps == sorted(steps)
    growths = [h["growth"] for h in lines if h["event"] in ("growth", "rollback")]
    assert growths == list(range(len(growths)))  # every growth exactly once, in order
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    cli("grow", spec, *ARGS, "-q", "--out", out)
    return out


def test_an_interrupted_run_resumes_bit_identical(spec, reference, tmp_path, monkeypatch):
    """Ctrl-C in the middle of the third round: exit 130, a line saying how to resume, and --resume
    alone finishes the run exactly as the uninterrupted one."""
    real, calls = dagrow.loop.train_steps, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(dagrow.loop, "train_steps", interrupted)
    out = tmp_path / "run"
    result = cli("grow", spec, *ARGS, "-q", "--out", out, code=130)
    assert f"dagrow grow --resume {out}" in result.stderr
    assert "continues from step 24" in result.stderr
    monkeypatch.setattr(dagrow.loop, "train_steps", real)
    cli("grow", "--resume", out, "-q")
    assert_same_run(out, reference)


def test_ctrl_c_while_starting_up_exits_130(spec, tmp_path, monkeypatch):
    import dagrow.cli_growth

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dagrow.cli_growth, "load_model_or_spec", interrupted)
    result = cli("grow", spec, *ARGS, "-q", "--out", tmp_path / "run", code=130)
    assert "interrupted" in result.stderr and "resume" not in result.stderr


def test_resume_refuses_conflicting_flags_and_accepts_equal_ones(spec, reference, tmp_path):
    says = cli("grow", "--resume", reference, "--every", "5", code=1).stderr
    assert "--every 5 (the run has 12)" in says
    assert "finished" in cli("grow", "--resume", reference, "--every", "12").stdout
    assert "give no SPEC" in cli("grow", spec, "--resume", reference, code=1).stderr
    assert "nothing to resume" in cli("grow", "--resume", tmp_path / "none", code=1).stderr


def test_out_holding_a_run_is_refused_unless_overwrite(spec, reference, tmp_path):
    says = cli("grow", spec, *ARGS, "-q", "--out", reference, code=1).stderr
    assert "already holds a run" in says and "--overwrite" in says
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "history.jsonl").write_text((reference / "history.jsonl").read_text())
    (copy / "notes.txt").write_text("mine")
    cli("grow", spec, *ARGS, "-q", "--out", copy, "--overwrite")
    assert_same_run(copy, reference)
    assert (copy / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_outputs_that_cannot_be_written_are_refused_before_training(spec, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert "not a folder" in cli("grow", spec, *ARGS, "--out", a_file, code=1).stderr
    (tmp_path / "run" / "spec.yaml").mkdir(parents=True)
    assert "is a folder" in cli("grow", spec, *ARGS, "--out", tmp_path / "run", code=1).stderr


def test_a_run_file_gives_the_settings_and_flags_override_it(spec, reference, tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text("growths: 4\nevery: 99\nbatch_size: 16\ngrowth_batch: 64\n")
    out = tmp_path / "run"
    cli("grow", spec, "--task", "moons", "--config", run_file, "--every", "12", "-q", "--out", out)
    assert_same_run(out, reference)
    run_file.write_text("growths: 4\nevrey: 3\nnatural: {tau: -1}\n")
    says = cli("grow", spec, "--task", "moons", "--config", run_file, "--out", tmp_path / "b", code=1).stderr
    assert f"{run_file}: evrey: unknown key 'evrey' (did you mean 'every'?)" in says
    assert f"{run_file}: natural.tau: tau must be a finite number >= 0" in says
    run_file.write_text("growths: [4\n")
    assert (
        f"{run_file}:2:1: not valid YAML"
        in cli("grow", spec, "--task", "moons", "--config", run_file, "--out", tmp_path / "c", code=1).stderr
    )
    says = cli("grow", spec, "--task", "moons", "--init", "TINY", "--out", tmp_path / "d", code=1).stderr
    assert "unknown init 'TINY' (did you mean 'tiny'?)" in says


def test_history_lines_written_after_the_last_checkpoint_are_written_again_once(spec, reference, tmp_path):
    """A run killed between appending its history and committing the checkpoint left extra lines (and
    maybe half a line): resume drops them and writes them again."""
    real = dagrow.loop.Run.commit
    out = tmp_path / "run"
    commits = []

    def commit_then_die(self):
        commits.append(1)
        if len(commits) == 3:  # the history of round 2 is written, its checkpoint is not
            (self.directory.history_path).open("a").write('{"event": "gro')
            raise KeyboardInterrupt
        real(self)

    dagrow.loop.Run.commit = commit_then_die  # type: ignore[method-assign]
    try:
        cli("grow", spec, *ARGS, "-q", "--out", out, code=130)
    finally:
        dagrow.loop.Run.commit = real  # type: ignore[method-assign]
    cli("grow", "--resume", out, "-q")
    assert_same_run(out, reference)


# --------------------------------------------------------------------------------------------------
# SIGKILL at many moments, in real processes
# --------------------------------------------------------------------------------------------------


def grow_process(*args, fault: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DAGROW_FAULT"}
    if fault:
        env["DAGROW_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "dagrow", "grow", *map(str, args), "-q"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(out: Path) -> None:
    """Resume until the run ends (a resumed run may itself be killed by a later fault)."""
    proc = grow_process("--resume", out)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "fault, again",
    [("checkpoint:1", None), ("checkpoint:3", "checkpoint:2"), ("checkpoint:6", "checkpoint:1")],
)
def test_sigkill_while_a_checkpoint_is_written(spec, reference, tmp_path, fault, again):
    """Checkpoints: 1 at the start, one after each of the 4 rounds, the 6th at the end."""
    out = tmp_path / "run"
    proc = grow_process(spec, *ARGS, "--out", out, fault=fault)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert list(out.glob(".*.tmp")), "the fault should leave the half-written checkpoint's temporary file"
    if again is not None:
        proc = grow_process("--resume", out, fault=again)  # killed again while resuming
        proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL
        finish(out)
        assert_same_run(out, reference)
    else:  # killed while writing its very first checkpoint: there is nothing to resume
        proc = grow_process("--resume", out)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 1 and "nothing to resume" in stderr and "start it again" in stderr


def test_sigkill_at_random_moments(spec, reference, tmp_path):
    """Kill each process at a random moment after it committed a checkpoint of its own (so that every
    process makes progress), five times, then let the last one finish."""
    rng = random.Random(0)
    out = tmp_path / "run"
    ckpt = out / "checkpoint.safetensors"
    proc = grow_process(spec, *ARGS, "--out", out)
    kills = 0
    for _ in range(5):
        seen = ckpt.stat().st_mtime_ns if ckpt.is_file() else None
        deadline = time.monotonic() + 120
        while proc.poll() is None and (not ckpt.is_file() or ckpt.stat().st_mtime_ns == seen):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        kills += 1
        proc = grow_process("--resume", out)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert kills >= 1
    assert_same_run(out, reference)
