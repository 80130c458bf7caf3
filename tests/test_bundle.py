"""Bundles (safetensors + the spec in the metadata) and atomic writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dagrow import SpecError, compile, load, load_spec, save
from dagrow.bundle import SPEC_KEY, atomic_write, atomic_write_text, read_bundle

ROOT = Path(__file__).resolve().parents[1]
DAG = ROOT / "specs" / "dag_skip.yaml"


@pytest.fixture
def bundle(tmp_path) -> Path:
    return save(compile(DAG, seed=0), tmp_path / "model.safetensors")


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def rewrite(path: Path, tensors: dict, meta: dict | None) -> Path:
    save_file(tensors, str(path), metadata=meta)
    return path


def messages(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(path)
    assert all(d.file.startswith(str(path)) for d in info.value.diagnostics)
    return [d.message for d in info.value.diagnostics]


def test_round_trip_is_bit_identical(bundle):
    spec = load_spec(DAG)
    model = load(bundle)
    assert model.spec == spec
    x = torch.randn(7, 8)
    assert torch.equal(model(x), compile(spec, seed=0)(x))
    assert metadata(bundle)["format"] == "dagrow-bundle/1"
    assert json.loads(metadata(bundle)[SPEC_KEY]) == spec.to_data()


def test_float64_stays_float64(tmp_path):
    path = save(compile(DAG, seed=0, dtype=torch.float64), tmp_path / "m.safetensors")
    assert all(p.dtype == torch.float64 for p in load(path).parameters())
    assert all(p.dtype == torch.float32 for p in load(path, dtype=torch.float32).parameters())


def test_spec_yaml_beside_the_bundle(tmp_path):
    model = compile(DAG, seed=0)
    save(model, tmp_path / "run" / "model.safetensors", spec_yaml=True)
    assert load_spec(tmp_path / "run" / "spec.yaml") == model.spec
    save(model, tmp_path / "m.safetensors", spec_yaml=tmp_path / "other.yaml")
    assert (tmp_path / "other.yaml").read_text() == model.spec.to_yaml()


def test_read_bundle_returns_spec_and_tensors(bundle):
    spec, tensors = read_bundle(bundle)
    assert spec == load_spec(DAG)
    assert set(tensors) == set(compile(spec).state_dict())


def test_wrong_names_and_shapes_say_exactly_what_does_not_match(bundle, tmp_path):
    tensors = load_file(str(bundle))
    tensors["edges.x__a.weight"] = torch.zeros(5, 8)
    tensors["edges.x__z.weight"] = torch.zeros(4, 8)
    del tensors["nodes.m.bias"]
    bad = rewrite(tmp_path / "bad.safetensors", tensors, metadata(bundle))
    assert sorted(messages(bad)) == [
        "missing tensor 'nodes.m.bias' (shape [4])",
        "tensor 'edges.x__a.weight' has shape [5, 8] but the spec needs [4, 8]",
        "unexpected tensor 'edges.x__z.weight' (shape [4, 8]): the spec has no such parameter",
    ]


def test_not_a_bundle(bundle, tmp_path):
    plain = rewrite(tmp_path / "plain.safetensors", load_file(str(bundle)), None)
    (message,) = messages(plain)
    assert message == f"this safetensors file has no {SPEC_KEY!r} metadata: it is not a dagrow bundle"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello")
    (message,) = messages(junk)
    assert message.startswith("not a safetensors file")
    assert messages(tmp_path / "missing.safetensors") == ["no such bundle file"]


def test_invalid_spec_in_the_metadata_names_the_bundle(bundle, tmp_path):
    meta = metadata(bundle)
    data = json.loads(meta[SPEC_KEY])
    data["edges"][0]["to"] = "aa"
    bad = rewrite(tmp_path / "bad.safetensors", load_file(str(bundle)), {**meta, SPEC_KEY: json.dumps(data)})
    with pytest.raises(SpecError) as info:
        load(bad)
    assert str(info.value).startswith(f"{bad}[{SPEC_KEY}]:1:1: edge x->aa (edges[0]): unknown target 'aa'")
    broken = rewrite(tmp_path / "broken.safetensors", load_file(str(bundle)), {**meta, SPEC_KEY: "{"})
    (message,) = messages(broken)
    assert message.startswith("the spec in the metadata is not valid JSON")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = atomic_write_text(tmp_path / "out.txt", "old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half written")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary file left


def test_atomic_writes_have_the_usual_permissions(tmp_path, bundle):
    mask = os.umask(0o022)
    try:
        written = atomic_write_text(tmp_path / "a" / "b.txt", "x")
        assert stat.S_IMODE(written.stat().st_mode) == 0o644
        assert stat.S_IMODE(save(compile(DAG), tmp_path / "c.safetensors").stat().st_mode) == 0o644
    finally:
        os.umask(mask)
