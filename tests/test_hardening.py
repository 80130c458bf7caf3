"""Hostile input: every file of tests/data/bad/ (and the large or binary ones built here) is refused by
`dagrow validate` and `dagrow compile` with exit status 1, the file named (with its line where it has
one), the expected reason, no traceback, and well within a time bound that only catches hangs.

tests/data/bad/manifest.json gives, per file, a substring of the expected message and its line.
"""

from __future__ import annotations

import json
import resource
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from dagrow import GraphSpec, SpecError, compile, load, load_spec, num_params, save
from dagrow.bundle import SPEC_KEY, strict_json
from dagrow.cli import app
from dagrow.cli_compare import static_labels
from dagrow.names import RESERVED_NAMES, name_problem
from dagrow.spec import MAX_REPORTED, MAX_SPEC_BYTES

BAD = Path(__file__).resolve().parent / "data" / "bad"
MANIFEST = json.loads((BAD / "manifest.json").read_text(encoding="utf-8"))
HANG = 10.0  # seconds: generous, only there to catch a hang
GOOD = """version: 1
inputs:
  x: {shape: [4]}
nodes:
  h: {width: 3, activation: relu}
  out: {width: 2}
edges:
  - {from: x, to: h}
  - {from: h, to: out}
outputs: [out]
"""


def refused(command: str, path: Path, expect: str, line: int | None = None) -> str:
    """Run ``dagrow COMMAND PATH`` in-process; check exit 1, the file (and line), the reason, no traceback."""
    started = time.perf_counter()
    result = CliRunner().invoke(app, [command, str(path)])
    seconds = time.perf_counter() - started
    assert seconds < HANG, f"{command} {path.name} took {seconds:.1f} s"
    out = result.output
    assert result.exit_code == 1, out
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in out
    assert expect in out, out
    assert f"{path}:" in out, out
    if line is not None:
        assert f"{path}:{line}:" in out, out
    assert "\x1b" not in out and "\x00" not in out  # nothing from the file reaches the terminal raw
    return out


def test_the_manifest_lists_every_file_of_the_corpus():
    files = {p.name for p in BAD.iterdir() if p.name != "manifest.json"}
    assert files == set(MANIFEST)
    classes = {name.split("_")[0] for name in MANIFEST}
    assert classes == {"yaml", "name", "type", "value", "growth"}


@pytest.mark.parametrize("name", sorted(MANIFEST))
@pytest.mark.parametrize("command", ["validate", "compile"])
def test_every_hostile_spec_is_refused(command, name):
    entry = MANIFEST[name]
    refused(command, BAD / name, entry["expect"], entry["line"])


# ---- large and binary specs, built at run time --------------------------------------------------------


def test_a_spec_larger_than_the_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(GOOD + "# " + "x" * (MAX_SPEC_BYTES + 10) + "\n")
    refused("validate", path, "larger than", 1)


def test_hundreds_of_thousands_of_errors_print_the_first_few_and_a_count(tmp_path):
    path = tmp_path / "errors.yaml"
    lines = [GOOD.replace("  out: {width: 2}\n", "  out: {width: 2}\n" + "".join(
        f"  n{i}: {{width: 3, oops{i}: 1}}\n" for i in range(20_000)
    ))]  # fmt: skip
    path.write_text(lines[0])
    assert path.stat().st_size < MAX_SPEC_BYTES
    out = refused("validate", path, "more problems")
    assert len(out.strip().splitlines()) == MAX_REPORTED + 1
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.total >= 20_000 and len(info.value.report()) == MAX_REPORTED + 1


def test_a_wide_billion_laughs_is_refused_quickly(tmp_path):
    text = GOOD + "l0: &l0 [" + ", ".join(["lol"] * 100) + "]\n"
    text += "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 100) + "]\n" for i in range(1, 12))
    path = tmp_path / "laughs.yaml"
    path.write_text(text)
    refused("validate", path, "expands to more than")


def test_very_deep_nesting_is_refused_without_recursion(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text(GOOD + "deep: " + "[" * 200_000 + "]" * 200_000 + "\n")
    refused("validate", path, "levels of nesting", 11)
    path.write_text(GOOD + "deep: " + "{a: " * 50_000 + "1" + "}" * 50_000 + "\n")
    refused("validate", path, "levels of nesting", 11)


@pytest.mark.parametrize(
    "raw, expect, line",
    [
        (GOOD.encode() + b"bad: \x00\n", "YAML syntax error", 11),
        (GOOD.encode() + b"bad: \x1b[2J\n", "YAML syntax error", 11),
        (GOOD.encode().replace(b"relu", b"rel\xff"), "not UTF-8", 1),
        (b"\xff\xfe" + GOOD.encode("utf-16-le"), "not UTF-8", 1),
    ],
    ids=["nul", "escape", "latin1", "utf16"],
)
def test_binary_junk_is_refused(tmp_path, raw, expect, line):
    path = tmp_path / "junk.yaml"
    path.write_bytes(raw)
    refused("validate", path, expect, line)


# ---- names: one rule, one module path per name -------------------------------------------------------


def test_the_naming_rule_gives_distinct_module_paths():
    names = ["a", "a_", "b", "b_", "a_b", "ab", "x1", "x_1"]
    pairs = [(u, w) for u in names for w in names if u != w]
    keys = {f"{u}__{w}" for u, w in pairs}
    assert len(keys) == len(pairs)
    assert name_problem("_b") and name_problem("a__b") and name_problem("\ufb01") and name_problem("self")
    assert {"update", "train", "forward", "keys", "to", "cuda", "type", "eval", "float"} <= RESERVED_NAMES
    assert all(name_problem(n) is None for n in names)


def test_a_validated_spec_compiles_to_the_model_it_describes():
    text = GOOD.replace("  out: {width: 2}\n", "  out: {width: 2}\n  h_: {width: 5}\n").replace(
        "  - {from: h, to: out}\n", "  - {from: h, to: out}\n  - {from: x, to: h_}\n  - {from: h_, to: out}\n"
    )
    spec = load_spec(text)
    model = compile(spec, seed=0)
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == num_params(spec)
    assert {"edges.x__h_.weight", "edges.h___out.weight", "nodes.h_.bias", "edges.h__out.weight"} <= set(
        params
    )
    sum(o.sum() for o in [model(torch.randn(3, 4))]).backward()
    assert all(p.grad is not None for p in params.values())


# ---- bundles -----------------------------------------------------------------------------------------


def _bundle(tmp_path: Path) -> tuple[Path, GraphSpec]:
    spec = load_spec(GOOD)
    return save(compile(spec, seed=0), tmp_path / "model.safetensors"), spec


def _raw_bundle(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_a_good_bundle_loads(tmp_path):
    path, spec = _bundle(tmp_path)
    assert load(path).spec == spec


@pytest.mark.parametrize(
    "dtype, code", [(torch.int64, "I64"), (torch.bool, "BOOL"), (torch.complex64, "C64")]
)
def test_bundles_with_int_bool_or_complex_tensors_are_refused(tmp_path, dtype, code):
    path, spec = _bundle(tmp_path)
    tensors = {k: v.to(dtype) for k, v in compile(spec, seed=0).state_dict().items()}
    save_file(tensors, str(path), metadata={SPEC_KEY: spec.to_json()})
    out = refused("validate", path, f"has dtype '{code}'", 1)
    assert "edges.x__h.weight" in out


def test_a_bundle_whose_spec_claims_billions_of_parameters_is_refused_before_allocating(tmp_path):
    path, spec = _bundle(tmp_path)
    header, data = _header(path)
    big = json.loads(header["__metadata__"][SPEC_KEY])
    big["inputs"]["x"]["shape"] = [40_000]
    big["nodes"]["h"]["width"] = 40_000
    big["growth"]["max_width"] = 40_000
    header["__metadata__"][SPEC_KEY] = json.dumps(big)
    _raw_bundle(path, header, data)
    assert path.stat().st_size < 4000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused("validate", path, "has shape [3, 4] but the spec needs [40000, 40000]", 1)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert (after - before) * 1024 < 1e9  # 1.6e9 parameters would be 6.4 GB


def test_a_bundle_with_deeply_nested_metadata_is_refused(tmp_path):
    path, spec = _bundle(tmp_path)
    header, data = _header(path)
    header["__metadata__"][SPEC_KEY] = "[" * 100_000 + "]" * 100_000
    _raw_bundle(path, header, data)
    refused("validate", path, "nested 100000 levels deep", 1)


def test_a_bundle_with_duplicate_keys_is_refused(tmp_path):
    path, spec = _bundle(tmp_path)
    header, data = _header(path)
    text = header["__metadata__"][SPEC_KEY]
    header["__metadata__"][SPEC_KEY] = text.replace('"version":1,', '"version":1,"name":"first",', 1)
    _raw_bundle(path, header, data)
    refused("validate", path, "duplicate key 'name'", 1)
    raw = json.dumps(header).replace('"__metadata__"', '"format": "x", "__metadata__"', 1)
    raw = raw.replace('"format": "x", ', '"format": "x", "format": "y", ', 1)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw.encode() + data)
    refused("validate", path, "duplicate key", 1)


def test_strict_json_refuses_depth_and_duplicates_and_reads_the_rest():
    assert strict_json('{"a": [1, {"b": "[[[["}]}') == {"a": [1, {"b": "[[[["}]}
    with pytest.raises(ValueError, match="duplicate key 'a'"):
        strict_json('{"a": 1, "a": 2}')
    with pytest.raises(ValueError, match="nested"):
        strict_json("[" * 65 + "]" * 65)


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda h, d: (h, d[:-4]), "data_offsets"),
        (lambda h, d: ({**h, "edges.x__h.weight": {**h["edges.x__h.weight"], "shape": [4, 3]}}, d), "shape"),
        (lambda h, d: ({k: v for k, v in h.items() if k != "nodes.h.bias"}, d), "missing tensor"),
        (lambda h, d: ({**h, "extra": h["nodes.h.bias"]}, d), "unexpected tensor 'extra'"),
        (lambda h, d: ({**h, "nodes.h.bias": [1, 2]}, d), "not a JSON object"),
        (lambda h, d: ({**h, "nodes.h.bias": {**h["nodes.h.bias"], "data_offsets": [0, 9**9]}}, d), "offs"),
        (lambda h, d: ({**h, "__metadata__": {"format": "x"}}, d), "not a dagrow bundle"),
        (lambda h, d: ({**h, "__metadata__": {SPEC_KEY: 5}}, d), "not a mapping of strings"),
    ],
    ids=["truncated", "shape", "missing", "unexpected", "entry", "offsets", "no-spec", "metadata-type"],
)  # fmt: skip
def test_bundle_headers_that_do_not_fit_the_spec_are_refused(tmp_path, mutate, expect):
    path, _ = _bundle(tmp_path)
    header, data = mutate(*_header(path))
    _raw_bundle(path, header, data)
    refused("validate", path, expect, 1)


@pytest.mark.parametrize(
    "raw, expect",
    [
        (b"", "shorter than the 8 bytes"),
        (struct.pack("<Q", 2**60) + b"{}", "header claims"),
        (struct.pack("<Q", 5) + b"nope!", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "header is"),
    ],
    ids=["empty", "huge-header", "not-json", "not-object", "not-utf8"],
)
def test_files_that_are_not_safetensors_are_refused(tmp_path, raw, expect):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(raw)
    refused("validate", path, expect, 1)


# ---- compare --static ---------------------------------------------------------------------------------


def test_static_baselines_with_the_same_file_name_keep_distinct_labels(tmp_path):
    a, b = tmp_path / "a" / "base.yaml", tmp_path / "b" / "base.yaml"
    labels = static_labels([a, b])
    assert labels == {"a-base": a, "b-base": b}
    assert static_labels([a, tmp_path / "c.yaml"]) == {"base": a, "c": tmp_path / "c.yaml"}
    assert set(static_labels([a], {"base"})) == {"a-base"}
    with pytest.raises(ValueError, match="given twice"):
        static_labels([a, tmp_path / "a" / ".." / "a" / "base.yaml"])
