"""The `dagrow` command: validate, compile, schema, export, ops, and the error paths (exit 1, a message on
stderr, never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from dagrow import compile, json_schema, list_activations, list_ops, load_spec, save
from dagrow.activations import activation_info
from dagrow.bundle import SPEC_KEY
from dagrow.cli import app
from dagrow.ops import op_info

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
DAG = ROOT / "specs" / "dag_skip.yaml"

TYPO = """\
version: 1
inputs:
  x: {shape: [4]}
nodes:
  h: {widht: 3}
edges:
  - {from: x, to: h}
outputs: [h]
"""


def run(*args: str | Path, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    if ok:
        assert result.exit_code == 0, result.output
        assert result.stderr == ""
    else:
        assert result.exit_code == 1, result.output
        assert result.stderr.strip(), "an error must say something on stderr"
    return result


@pytest.fixture
def typo(tmp_path) -> Path:
    path = tmp_path / "typo.yaml"
    path.write_text(TYPO)
    return path


@pytest.fixture
def bundle(tmp_path) -> Path:
    return save(compile(DAG, seed=0), tmp_path / "model.safetensors")


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------


def test_validate_prints_one_summary_line_per_spec():
    result = run("validate", *SPECS)
    lines = result.stdout.splitlines()
    assert len(lines) == len(SPECS)
    assert lines[SPECS.index(DAG)] == f"{DAG}: ok: dag-skip: 1 input, 4 nodes, 6 edges, 121 parameters"
    for path, line in zip(SPECS, lines, strict=True):
        assert line.startswith(f"{path}: ok: ")
        assert all(word in line for word in ("input", "nodes", "edges", "parameters"))


def test_validate_reports_file_line_column_on_stderr(typo):
    result = run("validate", DAG, typo, ok=False)
    assert result.stdout.startswith(f"{DAG}: ok:")  # the valid spec is still summarised
    assert result.stderr == f"{typo}:5:7: node 'h': unknown key 'widht' (did you mean 'width'?)\n"


def test_validate_lists_every_problem_of_every_file(tmp_path, typo):
    other = tmp_path / "cycle.yaml"
    other.write_text(TYPO.replace("widht", "width").replace("outputs:", "  - {from: h, to: h}\noutputs:"))
    result = run("validate", typo, other, ok=False)
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{typo}:5:7: ")
    assert lines[1] == f"{other}:8:5: edge h->h (edges[1]): cycle: h -> h"


def test_validate_checks_the_weights_of_a_bundle(bundle, tmp_path):
    assert run("validate", bundle).stdout.startswith(f"{bundle}: ok: dag-skip:")
    tensors = load_file(str(bundle))
    tensors["nodes.a.bias"] = torch.zeros(7)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"format": "dagrow-bundle/1", SPEC_KEY: load_spec(DAG).to_json()})
    result = run("validate", bad, ok=False)
    assert result.stderr == f"{bad}:1:1: tensor 'nodes.a.bias' has shape [7] but the spec needs [4]\n"


def test_missing_file(tmp_path):
    result = run("validate", tmp_path / "nope.yaml", ok=False)
    assert result.stderr == f"{tmp_path / 'nope.yaml'}:1:1: cannot read spec: No such file or directory\n"
    result = run("compile", tmp_path / "nope.safetensors", ok=False)
    assert result.stderr == f"{tmp_path / 'nope.safetensors'}:1:1: no such bundle file\n"


# ---------------------------------------------------------------------------------------------
# compile, schema, ops
# ---------------------------------------------------------------------------------------------


def test_compile_prints_the_fx_code_by_default():
    result = run("compile", DAG)
    assert result.stdout == compile(DAG).code.strip() + "\n"
    assert result.stdout == run("compile", DAG, "--code").stdout


def test_compile_params_table():
    result = run("compile", DAG, "--params")
    assert "def forward" not in result.stdout
    model = compile(DAG)
    for name, p in model.named_parameters():
        assert name in result.stdout and str(list(p.shape)) in result.stdout
    assert "121 parameters" in result.stdout
    both = run("compile", DAG, "--code", "--params").stdout
    assert "def forward" in both and "edges.x__a.weight" in both


def test_compile_a_bundle_and_a_bundle_with_wrong_weights(bundle, tmp_path):
    assert "def forward(self, x)" in run("compile", bundle).stdout
    tensors = load_file(str(bundle))
    del tensors["edges.m__out.weight"]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"format": "dagrow-bundle/1", SPEC_KEY: load_spec(DAG).to_json()})
    result = run("compile", bad, ok=False)
    assert result.stderr == f"{bad}:1:1: missing tensor 'edges.m__out.weight' (shape [2, 4])\n"


def test_compile_an_invalid_spec(typo):
    assert run("compile", typo, ok=False).stderr.startswith(f"{typo}:5:7: node 'h': unknown key 'widht'")


def test_schema_to_stdout_and_to_a_file(tmp_path):
    assert json.loads(run("schema").stdout) == json_schema()
    target = tmp_path / "sub" / "schema.json"
    assert run("schema", "-o", target).stdout == ""
    assert target.read_text() == (ROOT / "dagrow.schema.json").read_text()


def test_ops_lists_the_registry():
    words = set(run("ops").stdout.split())  # a table wraps its cells between words
    for name in list_ops():
        assert name in words and set(op_info(name).summary.split()) <= words, name
    for name in list_activations():
        assert name in words and set(activation_info(name).summary.split()) <= words, name
    assert "[out," in words  # summaries are printed as text, not read as rich markup


def test_help_names_every_command():
    result = run("--help")
    for command in ("validate", "compile", "schema", "export", "ops"):
        assert command in result.stdout


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------


def test_export_dot_has_widths_on_nodes_and_ops_on_edges():
    dot = run("export", DAG, "--to", "dot").stdout
    assert dot.startswith('digraph "dag-skip" {') and dot.rstrip().endswith("}")
    assert '"a" [label="a\\nwidth 4\\ntanh"];' in dot
    assert '"x" -> "out" [label="linear"];' in dot
    conv = run("export", ROOT / "specs" / "conv_digits.yaml", "--to", "dot").stdout
    assert '"img" -> "c1" [label="conv2d padding=1"];' in conv
    assert '"p1" -> "flat" [label="flatten"];' in conv
    assert "8 ch 4x4" in conv
    assert '{ rank=same; "a"; "b"; }' in dot  # ranked by topological generation


def test_export_yaml_is_the_canonical_spec(tmp_path, bundle):
    text = run("export", DAG, "--to", "yaml").stdout
    assert text == load_spec(DAG).to_yaml()
    assert load_spec(text) == load_spec(DAG)
    out = tmp_path / "spec.yaml"
    run("export", bundle, "--to", "yaml", "-o", out)
    assert out.read_text() == text


def test_export_dot_to_a_file(tmp_path):
    out = tmp_path / "arch.dot"
    assert run("export", DAG, "--to", "dot", "-o", out).stdout == ""
    assert out.read_text() == run("export", DAG).stdout  # dot is the default


def test_export_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "arch.png"
    result = run("export", ROOT / "specs" / "every_op.yaml", "--to", "png", "-o", out)
    assert result.stdout.strip() == f"wrote {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_png_needs_an_output_file():
    assert run("export", DAG, "--to", "png", ok=False).stderr == "error: --to png needs -o FILE.png\n"


def test_export_png_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    result = run("export", DAG, "--to", "png", "-o", tmp_path / "a.png", ok=False)
    assert result.stderr == "error: drawing a PNG needs matplotlib: pip install 'dagrow[plot]'\n"
    assert not (tmp_path / "a.png").exists()


# ---------------------------------------------------------------------------------------------
# usage errors exit 1 too
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["export", "SPEC", "--to", "svg"], "'svg' is not one of 'dot', 'png', 'yaml', 'pt2', 'onnx'"),
        (["export", "SPEC", "--bogus"], "No such option: --bogus"),
        (["compile"], "Missing argument 'SPEC'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_bad_flags_and_values_exit_1(args, says):
    result = run(*[str(DAG) if a == "SPEC" else a for a in args], ok=False)
    assert says in " ".join(result.stderr.replace("│", " ").split())


def test_console_entry_point_in_a_subprocess(typo):
    """The real process: exit status 1, the diagnostic alone on stderr, nothing else."""
    proc = subprocess.run(
        [sys.executable, "-m", "dagrow", "validate", str(typo)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"{typo}:5:7: node 'h': unknown key 'widht' (did you mean 'width'?)\n"
