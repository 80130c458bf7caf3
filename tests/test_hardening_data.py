"""Hostile data files, run files and outputs, and non-finite numerics (issue 12, items 8-11): every one
is refused by the CLI in-process with exit status 1, the file named (with its line or sample where it has
one), the reason, no traceback, and well within a time bound that only catches hangs; nothing with NaN or
infinite weights is ever written, and a diverging run stops with a message saying what to try.
"""

from __future__ import annotations

import io
import json
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import dagrow
from dagrow import compile, load_spec, save
from dagrow.bundle import FORMAT, SPEC_KEY, NonFiniteWeights
from dagrow.checkpoint import CHECKPOINT, HISTORY, Checkpoint, RunDirectory
from dagrow.cli import app
from dagrow.compare import OUTPUT_FILES, run_experiment, run_path
from dagrow.names import printable
from dagrow.tasks import DataError, load_data
from dagrow.training import DivergenceGuard, TrainingDiverged

HANG = 10.0  # seconds: generous, only there to catch a hang
SPEC = """version: 1
inputs:
  x: {shape: [1]}
nodes:
  h: {width: 3, activation: relu}
  out: {width: 2}
edges:
  - {from: x, to: h}
  - {from: h, to: out}
outputs: [out]
"""
MOONS = SPEC.replace("shape: [1]", "shape: [2]")  # for the built-in task moons (2 features, 2 classes)


def cli(args: list[str], expect: str, named: str | None = None, *, limit: float = HANG) -> str:
    """``dagrow ARGS`` in-process: exit 1, ``expect`` and ``named`` (a file, or FILE:LINE) in the
    output, no traceback, no raw escape, within ``limit`` seconds."""
    started = time.perf_counter()
    result = CliRunner().invoke(app, [str(a) for a in args])
    seconds = time.perf_counter() - started
    assert seconds < limit, f"dagrow {args[0]} took {seconds:.1f} s"
    out = result.output
    assert result.exit_code == 1, out
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in out
    assert expect in out, out
    if named is not None:
        assert named in out, out
    assert "\x1b" not in out and "\x00" not in out
    return out


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "s1.yaml"
    path.write_text(SPEC)
    return path


def grow_args(spec: Path, data: Path, out: Path) -> list[str]:
    return ["grow", spec, "--data", data, "--growths", "0", "--every", "2", "--out", out, "-q"]


# ---- item 8: data files ------------------------------------------------------------------------------

ROWS = "a,b\n" + "".join(f"{i},{i % 2}\n" for i in range(20))  # 20 good rows: lines 2..21


def _npy(array_or_header: np.ndarray | dict, version=(1, 0), data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    if isinstance(array_or_header, dict):
        write = (
            np.lib.format.write_array_header_1_0
            if version == (1, 0)
            else np.lib.format.write_array_header_2_0
        )
        write(buf, array_or_header)
        return buf.getvalue() + data
    np.save(buf, array_or_header)
    return buf.getvalue()


def _npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name + ".npy", raw)
    return path


Y20 = _npy(np.arange(20) % 2)
HUGE = {"descr": "<f8", "fortran_order": False, "shape": (10**12, 1)}  # 8 TB
CSV_CASES = {
    "delimiters.csv": (",,,\n,,,\n,,,\n", "no data rows", None),
    "semicolons.csv": (";;;;\n;;;;\n", "no data rows", None),
    "tabs.csv": ("\t\t\n\n\t\t\t\n", "no data rows", None),
    "field200k.csv": ("a,b\n" + "1" * 200_000 + ",1\n" + ROWS[4:], "more than 1,000 characters", 2),
    "field2k.csv": (ROWS + "1" * 2000 + ",1\n", "column 1 has 2,000 characters", 22),
    "header2k.csv": ("a" * 5000 + ",b\n" + ROWS[4:], "column 1 has 5,000 characters", 1),
    "label_huge.csv": (ROWS + "1,99999999999999999999999\n", "class label 1e+23 is too large", 22),
    "label_negative.csv": (ROWS + "1,-99999999999999999999999\n", "too large", 22),
    "label_2p53.csv": (ROWS + f"1,{2**53 + 2}\n", "too large", 22),
    "float32_x.csv": (ROWS + "1e300,1\n", "value beyond float32's range '1e300' in column 1 ('a')", 22),
    "float32_neg.csv": ("a,b\n-3.5e38,0\n" + ROWS[4:], "beyond float32's range", 2),
    "float32_y.csv": (ROWS.replace(",1\n", ",0.5\n") + "1,1e39\n", "'1e39' in column 2 ('b')", 22),
    "inf_digits.csv": (ROWS + "9" * 400 + ",1\n", "non-finite value", 22),
    "escape_header.csv": ("a\x1b[2J,b\n1,x\n", "'x' in column 2 ('b')", 2),
    "escape_value.csv": ("a,b\n1,\x1b[31mred\n", "is not a number", 2),
    "nul.csv": ("a,b\n1,\x002\n", "", 2),
}


@pytest.mark.parametrize("name", sorted(CSV_CASES))
def test_hostile_csv_files_are_refused_naming_file_and_line(tmp_path, spec, name):
    text, expect, line = CSV_CASES[name]
    path = tmp_path / name
    path.write_text(text)
    named = f"{path}:{line}:" if line is not None else f"{path}:"
    cli(grow_args(spec, path, tmp_path / "out"), expect, named)
    assert not (tmp_path / "out" / CHECKPOINT).exists()


NPZ_CASES = {
    "huge_v1.npz": ({"x": _npy(HUGE, data=b"\0" * 64), "y": Y20}, "8,000,000,000,000 bytes"),
    "huge_v2.npz": ({"x": _npy(HUGE, (2, 0), b"\0" * 64), "y": Y20}, "8,000,000,000,000 bytes"),
    "huge_y.npz": ({"x": _npy(np.zeros((20, 1))), "y": _npy({**HUGE, "descr": "<i8"})}, "array 'y'"),
    "short.npz": (
        {"x": _npy({**HUGE, "shape": (100, 1)}, data=b"\0" * 80), "y": Y20},
        "800 bytes) but the archive holds 80 bytes",
    ),
    "negative_shape.npz": ({"x": b"\x93NUMPY\x01\x00" + b"v\x00" + b"{}" * 59 + b"\n", "y": Y20}, "header"),
    "object.npz": ({"x": _npy({**HUGE, "descr": "|O", "shape": (2,)}), "y": Y20}, "dtype object"),
    "no_x.npz": ({"y": Y20}, "missing array 'x'"),
    "float32_inf.npz": ({"x": _npy(np.array([[1.0], [1e300]] * 10)), "y": Y20}, "sample 1: array 'x'"),
    "label_huge.npz": ({"x": _npy(np.zeros((20, 1))), "y": _npy(np.array([0] * 19 + [2**60]))}, "sample 19"),
    "nan_y.npz": ({"x": _npy(np.zeros((20, 1))), "y": _npy(np.array([0.0] * 19 + [math.nan]))}, "sample 19"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(NPZ_CASES))
def test_hostile_npz_files_are_refused_before_allocating(tmp_path, spec, name):
    members, expect = NPZ_CASES[name]
    path = _npz(tmp_path / name, members)
    cli(grow_args(spec, path, tmp_path / "out"), expect, f"{path}:")


def test_not_a_zip_and_a_bare_npy_are_refused(tmp_path, spec):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x1b[2J not a zip")
    cli(grow_args(spec, junk, tmp_path / "out"), "not a zip file", f"{junk}:")
    single = tmp_path / "single.npz"
    single.write_bytes(_npy(np.zeros((20, 1))))
    cli(grow_args(spec, single, tmp_path / "out"), "holds a single array", f"{single}:")


def test_good_data_still_loads(tmp_path):
    (tmp_path / "ok.csv").write_text(ROWS + f"1,{2**53}\n")  # the largest label allowed
    assert load_data(tmp_path / "ok.csv", kind="classification").output_dim == 3
    np.savez(tmp_path / "ok.npz", x=np.full((20, 1), 3e38), y=np.arange(20) % 2)
    assert load_data(tmp_path / "ok.npz").kind == "classification"
    with pytest.raises(DataError, match=r"bad\.csv:3:"):
        (tmp_path / "bad.csv").write_text("a,b\n1,0\n1,3.5e38\n")
        load_data(tmp_path / "bad.csv")


# ---- item 9: run files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The run directory of a tiny finished growth run (resume reads all of it before it says so)."""
    root = tmp_path_factory.mktemp("run")
    (root / "s1.yaml").write_text(MOONS)
    out = root / "run"
    result = CliRunner().invoke(
        app, ["grow", str(root / "s1.yaml"), "--task", "moons", "--growths", "2", "--every", "3",
              "--out", str(out), "-q"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _rewrite_meta(path: Path, change) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta = json.loads(header["dagrow.run"])
    change(meta, tensors)
    save_file(tensors, str(path), metadata={**header, "dagrow.run": json.dumps(meta)})


HISTORY_DAMAGE = {
    "list-line": (lambda t: t.replace("\n", "\n[1, 2]\n", 1), ":2: a history line is a JSON object"),
    "string-line": (lambda t: '"x"\n' + t, ":1: a history line is a JSON object"),
    "number-line": (lambda t: "5\n" + t, ":1: a history line is a JSON object"),
    "not-json": (lambda t: "{oops\n" + t, ":1: not JSON"),
    "truncated": (lambda t: t.split("\n", 1)[0][:20], "lines, but the checkpoint counts"),
    "empty": (lambda t: "", "0 lines, but the checkpoint counts"),
}


@pytest.mark.parametrize("damage", sorted(HISTORY_DAMAGE))
def test_damaged_histories_are_refused_naming_the_file(run_dir, tmp_path, damage):
    change, expect = HISTORY_DAMAGE[damage]
    run = _copy_run(run_dir, tmp_path)
    history = run / HISTORY
    history.write_text(change(history.read_text()))
    cli(["grow", "--resume", run], expect, str(history))


def test_a_history_that_is_not_utf8_is_refused(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path)
    (run / HISTORY).write_bytes(b"\xff\xfe{}\n" + (run / HISTORY).read_bytes())
    cli(["grow", "--resume", run], "not UTF-8", str(run / HISTORY))


CHECKPOINT_DAMAGE = {
    "no-config": (lambda m, t: m.pop("config"), "missing or malformed config"),
    "step-string": (lambda m, t: m.update(step="7"), "missing or malformed step"),
    "spec-list": (lambda m, t: m.update(spec=[1]), "missing or malformed spec"),
    "no-rng": (lambda m, t: t.pop("rng/growth"), "missing the random states"),
    "optimizer": (lambda m, t: m.update(optimizer={"param_groups": 3}), "optimizer state is malformed"),
}


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGE))
def test_damaged_checkpoints_are_refused_naming_the_file(run_dir, tmp_path, damage):
    change, expect = CHECKPOINT_DAMAGE[damage]
    run = _copy_run(run_dir, tmp_path)
    _rewrite_meta(run / CHECKPOINT, change)
    cli(["grow", "--resume", run], expect, str(run / CHECKPOINT))


@pytest.mark.parametrize(
    "content", ["[1, 2]", '"rows"', "null", '{"rows": 5}', '{"fingerprint": "x"}', "{not json", "\xff"]
)
def test_compare_run_files_that_are_not_objects_are_redone_with_a_warning(tmp_path, content):
    from tests.test_compare import tiny_experiment

    exp = tiny_experiment(strategies=["naive"], seeds=1, statics={})
    exp.config = exp.config.replace(growths=1)
    key = exp.keys()[0]
    path = run_path(tmp_path, key)
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="latin-1")
    with pytest.warns(UserWarning, match="the run is done again"):
        rows = run_experiment(exp, tmp_path)
    assert rows and json.loads(path.read_text())["rows"] == rows


def test_compare_run_files_with_foreign_rows_are_redone(tmp_path):
    from tests.test_compare import tiny_experiment

    exp = tiny_experiment(strategies=["naive"], seeds=1, statics={})
    exp.config = exp.config.replace(growths=1)
    rows = run_experiment(exp, tmp_path)
    path = run_path(tmp_path, exp.keys()[0])
    doc = json.loads(path.read_text())
    doc["rows"][0]["run"] = "someone-else"
    path.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="row 0 is not a row of run"):
        again = run_experiment(exp, tmp_path)
    assert len(again) == len(rows)


# ---- item 10: outputs and what reaches the terminal ---------------------------------------------------


def test_export_refuses_an_output_it_cannot_write_before_any_work(tmp_path, spec):
    folder = tmp_path / "folder.dot"
    folder.mkdir()
    cli(["export", spec, "--to", "dot", "-o", folder], "-o names a folder", str(folder))
    blocker = tmp_path / "file"
    blocker.write_text("")
    cli(["export", spec, "--to", "pt2", "-o", blocker / "m.pt2"], "is a file, not a folder", str(blocker))
    cli(["schema", "-o", folder], "-o names a folder", str(folder))


def test_compare_refuses_outputs_it_cannot_write_before_any_run(tmp_path):
    spec = tmp_path / "moons.yaml"
    spec.write_text(MOONS)
    args = ["compare", spec, "--task", "moons", "--strategies", "naive", "--seeds", "1", "--growths", "1"]
    existing = tmp_path / "existing"
    existing.write_text("")
    cli([*args, "--out", existing], "--out names an existing file", str(existing))
    for name in (*OUTPUT_FILES, "runs/grow-naive-tiny-s0.json"):
        out = tmp_path / name.replace("/", "_").replace(".", "_")
        (out / name).mkdir(parents=True)
        cli(
            [*args, "--out", out], "is a folder; the command writes a file there", str(out / name), limit=HANG
        )
        assert not [p for p in out.rglob("*") if p.is_file()]  # refused before any run wrote anything


def test_control_characters_never_reach_the_terminal(tmp_path, spec):
    evil = tmp_path / "evil\x1b[2J\x07\u202e.yaml"
    evil.write_text(SPEC.replace("version: 1\n", 'version: 1\nname: "pwn\\e]0;title\\a"\n'))
    out = cli(["validate", evil], "name: contains the control character \\x1b at position 3", ":2:")
    assert printable(str(evil)) in out and "\u202e" not in out
    data = tmp_path / "d\x1b[31m.csv"
    data.write_text("a,b\n")
    cli(grow_args(spec, data, tmp_path / "o"), "no data rows", printable(str(data)))
    cli(
        ["grow", spec, "--task", "[bold]\x1b[31m", "--out", tmp_path / "o2"], "unknown task '[bold]\\x1b[31m'"
    )
    assert printable("a\x1b[2Jb\x00\t\n\x9b\u2066") == "a\\x1b[2Jb\\x00\t\n\\x9b\\u2066"


# ---- item 11: numerics --------------------------------------------------------------------------------


def _nan_model():
    model = compile(load_spec(MOONS), seed=0)
    with torch.no_grad():
        model.get_parameter("edges.h__out.weight")[1, 2] = math.inf
        model.get_parameter("nodes.h.bias")[0] = math.nan
    return model


def test_save_refuses_non_finite_weights_and_writes_nothing(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(NonFiniteWeights) as info:
        save(_nan_model(), path, spec_yaml=True)
    message = str(info.value)
    assert str(path) in message and "'nodes.h.bias' has 1 NaN" in message
    assert "'edges.h__out.weight' has 0 NaN and 1 infinite" in message
    assert isinstance(info.value, ValueError) and list(tmp_path.iterdir()) == []


def test_a_bundle_with_non_finite_weights_is_refused_by_every_command(tmp_path):
    model = _nan_model()
    path = tmp_path / "nan.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, SPEC_KEY: model.spec.to_json()})
    for args in (["validate", path], ["compile", path], ["export", path, "--to", "yaml"]):
        cli(args, "non-finite weights: tensor 'nodes.h.bias'", f"{path}:1:")
    out = tmp_path / "out"
    cli(
        ["grow", path, "--task", "moons", "--growths", "0", "--out", out],
        "'edges.h__out.weight'",
        f"{path}:1:",
    )
    assert not (out / "model.safetensors").exists()


def test_a_checkpoint_with_non_finite_weights_is_refused_and_the_previous_one_stays(tmp_path):
    directory = RunDirectory(tmp_path)
    good = compile(load_spec(SPEC), seed=0).state_dict()
    directory.commit(Checkpoint({"step": 1}, good))
    before = directory.checkpoint_path.read_bytes()
    with pytest.raises(NonFiniteWeights, match=r"checkpoint\.safetensors.*'nodes\.h\.bias'"):
        directory.commit(Checkpoint({"step": 2}, _nan_model().state_dict()))
    assert directory.checkpoint_path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]


def test_the_divergence_rule():
    guard = DivergenceGuard()
    for step, loss in enumerate([2.3, 50.0, 1e5, 2.2e6, 1e-9], 1):  # healthy, if noisy: never refused
        guard.check(loss, step, None)
    assert guard.reference == 2.3
    with pytest.raises(
        TrainingDiverged, match=r"step 6: the training loss 2.4e\+06 is more than 1e\+06 times"
    ):
        guard.check(2.4e6, 6, None)
    small = DivergenceGuard(reference=1e-6)  # a tiny first loss: the limit is 1e6, not 1
    small.check(9e5, 1, None)
    for value in (math.nan, math.inf):
        with pytest.raises(TrainingDiverged, match=f"step 3: the training loss is {value}"):
            DivergenceGuard().check(value, 3, torch.optim.SGD([torch.zeros(1)], lr=0.5))


def test_a_diverging_run_stops_with_a_clear_message_and_keeps_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [
        "grow",
        "specs/mlp_sin50.yaml",
        "--task",
        "sin50",
        "--growths",
        "3",
        "--every",
        "20",
        "--lr",
        "1e6",
    ]
    message = cli([*args, "--out", out, "-q"], "training diverged at step", limit=30)
    assert "try a smaller learning rate (--lr; this run's is 1e+06)" in message
    assert f"the last checkpoint stays in {out} (step 0)" in message
    ckpt = RunDirectory(out).load()
    assert ckpt.meta["step"] == 0 and all(torch.isfinite(w).all() for w in ckpt.weights.values())
    bundle = dagrow.load(out / "model.safetensors")  # the outputs are those of the last checkpoint
    assert all(torch.equal(p, ckpt.weights[k]) for k, p in bundle.state_dict().items())


def test_a_nan_in_the_training_loss_stops_the_python_api(tmp_path):
    from dagrow import GrowthConfig, grow
    from dagrow.tasks import make_task

    model = compile(load_spec(MOONS), seed=0)
    with torch.no_grad():
        model.get_parameter("nodes.out.bias")[0] = math.nan
    task = make_task("moons", seed=0)
    with pytest.raises(TrainingDiverged, match="step 1: the training loss is nan"):
        grow(model, task, GrowthConfig(growths=1, every=3))
