"""Program exports: `dagrow export --to pt2` (torch.export) and `--to onnx` (the optional extra).

The exported program must compute what the model computes: float64 weights, inputs of a batch size
other than the one traced, several inputs and outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import dagrow
from dagrow.cli import app
from dagrow.export import ONNX_EXTRA, example_inputs, write_pt2
from dagrow.loop import GrowthConfig, grow
from dagrow.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
TWO = ROOT / "specs" / "two_in_two_out.yaml"


def run(*args, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exit_code == (0 if ok else 1), result.output
    return result


def as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


@pytest.fixture
def bundle64(tmp_path) -> tuple[Path, dagrow.DagModel]:
    """A float64 bundle of the two-input, two-output spec with non-trivial weights."""
    model = dagrow.compile(dagrow.load_spec(TWO), seed=3, dtype=torch.float64)
    return dagrow.save(model, tmp_path / "two.safetensors"), model


def test_pt2_from_a_bundle_reloads_with_the_same_outputs(tmp_path, bundle64):
    path, model = bundle64
    out = tmp_path / "two.pt2"
    assert run("export", path, "--to", "pt2", "-o", out).stdout.strip() == f"wrote {out}"
    program = torch.export.load(out)
    user_inputs = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    assert user_inputs == ["u", "v"]
    module = program.module()
    for batch in (1, 2, 17):  # traced at batch 2; the batch dimension is dynamic
        x = example_inputs(model.spec, batch=batch, dtype=torch.float64, seed=batch)
        got, want = as_tuple(module(*x)), as_tuple(model(*x))
        assert len(got) == len(want) == 2
        for g, w in zip(got, want, strict=True):
            assert g.dtype == torch.float64 and g.shape == w.shape
            assert torch.equal(g, w)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_pt2_of_a_grown_model_is_bit_identical(tmp_path):
    task = make_task("sin50", n=600)
    config = GrowthConfig(growths=2, every=5, neurons=2, growth_batch=128, batch_size=32)
    spec = dagrow.load_spec(ROOT / "specs" / "mlp_sin50.yaml")
    model = grow(spec, task, config).model
    assert dagrow.num_params(model.spec) > dagrow.num_params(spec)
    module = torch.export.load(write_pt2(model, tmp_path / "grown.pt2")).module()
    x = task.test.x[:50]
    assert torch.equal(module(x), model(x))


def test_pt2_from_a_spec_exports_the_seed_0_initialisation(tmp_path):
    out = tmp_path / "conv.pt2"
    run("export", ROOT / "specs" / "conv_digits.yaml", "--to", "pt2", "-o", out)
    spec = dagrow.load_spec(ROOT / "specs" / "conv_digits.yaml")
    x = example_inputs(spec, batch=5)
    assert torch.equal(torch.export.load(out).module()(*x), dagrow.compile(spec, seed=0)(*x))


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_program_formats_need_an_output_file(fmt):
    assert run("export", TWO, "--to", fmt, ok=False).stderr == f"error: --to {fmt} needs -o FILE.{fmt}\n"


def test_a_failed_trace_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("unsupported thing\nwith a long explanation")

    monkeypatch.setattr(torch.export, "export", fail)
    result = run("export", TWO, "--to", "pt2", "-o", tmp_path / "a.pt2", ok=False)
    assert result.stderr == "error: two-in-two-out: torch.export failed: unsupported thing\n"
    assert list(tmp_path.iterdir()) == []


def test_onnx_without_the_extra_says_what_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxscript")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    result = run("export", TWO, "--to", "onnx", "-o", tmp_path / "a.onnx", ok=False)
    assert result.stderr == f"error: {ONNX_EXTRA}\n"
    assert "pip install 'dagrow[onnx]'" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, atol",
    [
        ("two_in_two_out.yaml", 1e-13),
        # gelu: onnx's reference Erf is a float64 approximation good to ~1e-10, not exact
        ("every_op.yaml", 1e-8),
    ],
)
def test_onnx_runs_with_the_same_outputs(tmp_path, name, atol):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from onnx.reference import ReferenceEvaluator  # onnxruntime has no float64 Conv; this has

    model = dagrow.compile(dagrow.load_spec(ROOT / "specs" / name), seed=1, dtype=torch.float64)
    path = dagrow.save(model, tmp_path / "m.safetensors")
    out = tmp_path / "m.onnx"
    run("export", path, "--to", "onnx", "-o", out)
    proto = onnx.load(out)
    onnx.checker.check_model(proto)
    spec = model.spec
    assert [i.name for i in proto.graph.input] == list(spec.inputs)
    assert [o.name for o in proto.graph.output] == list(spec.outputs)
    x = example_inputs(spec, batch=9, dtype=torch.float64, seed=4)
    got = ReferenceEvaluator(proto).run(None, {k: t.numpy() for k, t in zip(spec.inputs, x, strict=True)})
    want = as_tuple(model(*x))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype.name == "float64" and g.shape == tuple(w.shape)
        torch.testing.assert_close(torch.from_numpy(g), w.detach(), rtol=0, atol=atol)
