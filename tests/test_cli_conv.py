"""The CLI on conv specs: `dagrow sites`, `grow`, `compare` and every export of specs/resnet_digits.yaml
(a residual CNN on the 8x8 digits) grown a few steps; the grown bundle reloads and exports bit-identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import dagrow
from dagrow.cli import app
from dagrow.export import example_inputs
from dagrow.results import read_results

ROOT = Path(__file__).resolve().parents[1]
RESNET = ROOT / "specs" / "resnet_digits.yaml"


def run(*args: str | Path, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exit_code == (0 if ok else 1), result.output
    return result


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> Path:
    """specs/resnet_digits.yaml grown 3 times (naive: round robin over the growable sites) on digits."""
    out = tmp_path_factory.mktemp("grown") / "run"
    args = ["--growths", "3", "--every", "2", "--growth-batch", "32", "--batch-size", "16", "--neurons", "2"]
    run("grow", RESNET, "--task", "digits", "--strategy", "naive", *args, "--out", out, "-q")
    return out


def test_sites_of_the_resnet_list_image_sites_and_the_tied_nodes_with_their_reason():
    args = ["--task", "digits", "--json", "--neurons", "2", "--batch", "128"]
    doc = json.loads(run("sites", RESNET, *args).stdout)
    sites = {s["site"]: s for s in doc["sites"]}
    assert set(doc["growable"]) == {
        "widen:a1",
        "widen:a2",
        "node:stem->b1",
        "node:p1->b2",
        "edge:img->b1",
        "edge:img->a1",
    }
    for name in doc["growable"]:
        assert sites[name]["lambdas"] and sites[name]["skipped"] is None
    # two new channels of a1 (batch-normed, no bias): 2 x 8 x 3 x 3 in, 2 x 8 x 3 x 3 out (whole kernels,
    # zero off centre) and the norm's weight and bias; a new node on stem->b1 has a bias and no norm
    assert sites["widen:a1"]["params_added"] == 2 * 72 + 2 * 72 + 2 * 2
    assert sites["node:stem->b1"]["params_added"] == 2 * 73 + 2 * 72
    assert sites["edge:img->b1"]["params_added"] == 1 * 9 * 8
    assert (
        "identity edge" in sites["widen:b1"]["skipped"]
        and "a join grows with all its inputs" in sites["widen:stem"]["skipped"]
    )
    assert (
        "avg_pool edge" in sites["widen:p1"]["skipped"] and "flatten edge" in sites["widen:flat"]["skipped"]
    )
    assert (
        "grown by the natural strategy" in sites["deepen:a1->b1"]["skipped"]
    )  # deepenings are the natural strategy's


@pytest.mark.slow  # grows a CNN: 10-60 s on the shared 2-core machine
def test_grow_a_conv_spec_writes_a_bigger_network(grown):
    start, spec = dagrow.load_spec(RESNET), dagrow.load_spec(grown / "spec.yaml")
    assert dagrow.num_params(spec) > dagrow.num_params(start)
    lines = [json.loads(line) for line in (grown / "history.jsonl").read_text().splitlines()]
    growths = [line for line in lines if line["event"] == "growth"]
    assert [g["site"] for g in growths] == ["widen:a1", "widen:a2", "node:stem->b1"]  # naive: in order
    for g in growths:  # what the proposal said it adds is what the rewrite added
        assert g["params"] == g["params_before"] + g["params_added"], g
    assert spec.nodes["a1"].size == 6 and spec.nodes["a2"].size == 6
    for name in ("model.safetensors", "architecture.png", "architecture.dot", "growth.png", "metrics.csv"):
        assert (grown / name).is_file(), name
    model = dagrow.load(grown / "model.safetensors").eval()
    assert model.spec == spec


@pytest.mark.slow  # grows a CNN: 10-60 s on the shared 2-core machine
def test_the_grown_cnn_exports_and_reloads_bit_identically(grown, tmp_path):
    bundle = grown / "model.safetensors"
    model = dagrow.load(bundle).eval()  # batch norm: bit-identical in eval mode (exports run in eval)
    x = dagrow.make_task("digits", image=True).test.x[:33]
    want = model(x)
    # the spec as YAML plus the bundle's weights recompile to the same function
    yaml_path = tmp_path / "spec.yaml"
    run("export", bundle, "--to", "yaml", "-o", yaml_path)
    again = dagrow.compile(dagrow.load_spec(yaml_path), model.state_dict()).eval()
    assert torch.equal(again(x), want)
    # a saved copy of the reloaded model is the same bundle
    copy = dagrow.save(model, tmp_path / "copy.safetensors")
    assert torch.equal(dagrow.load(copy).eval()(x), want)
    # torch.export, traced at batch 2, run at batch 33
    pt2 = tmp_path / "grown.pt2"
    run("export", bundle, "--to", "pt2", "-o", pt2)
    assert torch.equal(torch.export.load(pt2).module()(x), want)
    # the drawings name the grown nodes
    dot = run("export", bundle, "--to", "dot").stdout
    assert "conv2d" in dot and all(v in dot for v in model.spec.nodes)
    png = tmp_path / "grown.png"
    run("export", bundle, "--to", "png", "-o", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # grows a CNN: 10-60 s on the shared 2-core machine
def test_the_grown_cnn_exports_to_onnx(grown, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from onnx.reference import ReferenceEvaluator

    model = dagrow.load(grown / "model.safetensors").eval()
    out = tmp_path / "grown.onnx"
    run("export", grown / "model.safetensors", "--to", "onnx", "-o", out)
    proto = onnx.load(out)
    onnx.checker.check_model(proto)
    (x,) = example_inputs(model.spec, batch=5, seed=1)
    (got,) = ReferenceEvaluator(proto).run(None, {"img": x.numpy()})
    # float32 model: the reference evaluator's convolution sums in another order
    torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # grows a CNN: 10-60 s on the shared 2-core machine
def test_grow_resumes_from_the_grown_bundle_and_refuses_a_bad_conv_kernel(grown, tmp_path):
    """The grown bundle is a valid starting point (a spec with nodes n<k> and widened channels);
    a growth section with an even conv_kernel is a spec error, not a traceback."""
    out = tmp_path / "more"
    args = ["--growths", "1", "--every", "1", "--growth-batch", "32", "--batch-size", "16"]
    run("grow", grown / "model.safetensors", "--task", "digits", *args, "--out", out, "-q")
    assert dagrow.num_params(dagrow.load_spec(out / "spec.yaml")) >= dagrow.num_params(
        dagrow.load_spec(grown / "spec.yaml")
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(RESNET.read_text().replace("conv_kernel: 3", "conv_kernel: 2"))
    result = run("validate", bad, ok=False)
    assert "conv_kernel must be odd" in result.stderr and "bad.yaml:" in result.stderr


@pytest.mark.slow  # grows a CNN: 10-60 s on the shared 2-core machine
def test_compare_on_the_conv_spec(tmp_path):
    out = tmp_path / "cmp"
    args = ["--task", "digits", "--strategies", "naive", "--inits", "tiny,gradmax", "--seeds", "1"]
    args += ["--growths", "1", "--every", "2", "--batch-size", "16"]
    run("compare", RESNET, *args, "--out", out)
    rows = read_results(out / "results.csv")
    runs = {r["run"] for r in rows}
    assert runs == {"grow-naive-tiny-s0", "grow-naive-gradmax-s0"}
    grew = [r for r in rows if r["event"] == "growth"]
    assert len(grew) == 2 and all(r["site"] == "widen:a1" for r in grew)
    assert all(int(r["parameters"]) > dagrow.num_params(dagrow.load_spec(RESNET)) for r in grew)
