"""Fuzzing the spec loader: random mutations of every spec in specs/ never give a traceback or a hang.

Each example takes a spec from specs/, applies a few mutations to its data (deleted keys, values of
another type, huge or non-finite numbers, renamed nodes, extra edges) and then to its text (byte
flips, deleted and duplicated lines, anchors and aliases, tags, merge keys), and loads it. Either
:class:`SpecError` names the file with a line and a column, or the spec is valid, and then it compiles,
its parameter count is the one ``validate`` prints, and every parameter receives a gradient.

CI runs a few examples; ``DAGROW_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz_spec.py`` runs a
long session (with a random seed: set ``DAGROW_FUZZ_SEED`` to replay one).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from dagrow import SpecError, compile, load_spec, num_params
from dagrow.graph import analyze

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted((ROOT / "specs").glob("*.yaml"))
TEXTS = {p.name: p.read_text(encoding="utf-8") for p in SPEC_FILES}
EXAMPLES = int(os.environ.get("DAGROW_FUZZ_EXAMPLES", "40"))
SEED = int(os.environ.get("DAGROW_FUZZ_SEED", "0"))
LONG = "DAGROW_FUZZ_EXAMPLES" in os.environ
HANG = 10.0  # seconds: far beyond any legitimate load; only catches hangs

# values that broke (or could break) the loader: wrong types, huge and non-finite numbers, hostile names
NASTY: list[Any] = [
    True, False, None, "4", 4.0, 0, -1, 2**63, 10**30, 10**400, float("nan"), float("inf"), -float("inf"),
    1e308, 1e-308, "", " ", "\u00e9", "\ufb01", "fi", "update", "self", "train", "forward", "keys", "to",
    "_b", "a_", "x__y", "class", "sum", "input", "torch", [], {}, [1, 2], [1, 2, 3, 4], [-1, -1],
    {"name": "prelu", "init": float("nan")}, {"name": "softplus", "beta": float("inf")},
    {"name": "rational", "v": 1e300}, {"type": "conv2d", "padding": 100000},
    {"type": "max_pool", "kernel": 200006, "padding": 100000}, {"type": "avg_pool", "padding": 5},
    "010", "0x10", 1_000_000, 1_000_001, 100_000, "linear", "conv2d", "max_pool", "flatten", "identity",
    "relu", "rational", "all", "none", "edges", [["x", "out"]],
]  # fmt: skip
NAMES = ["\ufb01", "fi", "update", "self", "a_", "_b", "a", "b", "out", "x", "h1", "a_b", "keys", "Zz9_"]
SNIPPETS = [
    "anchor: &a [1, 2, 3]\n",
    "alias: *a\n",
    "<<: *a\n",
    "loop: &r [*r]\n",
    "? !!python/name:os.system\n: 1\n",
    "boom: !!python/object/apply:os.system ['echo hi']\n",
    "s: !!set {a, b}\n",
    "t: !custom value\n",
    "b: !!binary aGVsbG8=\n",
    "n: 010\n",
    "h: 0x10\n",
    "sx: 1:30\n",
    "lol: &l0 [x, x, x, x, x, x, x, x, x, x]\nl1: &l1 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]\n"
    "l2: &l2 [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1]\n"
    "l3: &l3 [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2]\n"
    "l4: &l4 [*l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3]\n"
    "l5: &l5 [*l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4]\n"
    "l6: [*l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5]\n",
    "deep: " + "[" * 200 + "]" * 200 + "\n",
    "  - {from: x, to: out}\n",
    "  extra: {width: 3}\n",
    "\t\x00\x1b[31m\n",
]
FLIP_CHARS = list("0123456789:{}[],&*!|>-?#'\" \n\tx_aZ.") + ["\u00e9", "\ufb01", "\x00", "\x1b", "\ud7ff"]


def _containers(data: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every mapping and list in ``data``."""
    out = []
    if isinstance(data, dict):
        out.append(path)
        for k, v in data.items():
            out += _containers(v, (*path, k))
    elif isinstance(data, list):
        out.append(path)
        for i, v in enumerate(data):
            out += _containers(v, (*path, i))
    return out


def _get(data: Any, path: tuple) -> Any:
    for p in path:
        data = data[p]
    return data


@st.composite
def data_mutation(draw, data: Any) -> None:
    """Mutate ``data`` (parsed spec) in place."""
    paths = _containers(data)
    target = _get(data, draw(st.sampled_from(paths)))
    keys = list(target) if isinstance(target, dict) else list(range(len(target)))
    kind = draw(st.sampled_from(["delete", "replace", "replace", "number", "rename", "edge", "width"]))
    if kind == "delete" and keys:
        del target[draw(st.sampled_from(keys))]
    elif kind == "replace" and keys:
        target[draw(st.sampled_from(keys))] = copy.deepcopy(draw(st.sampled_from(NASTY)))  # NASTY stays
    elif kind == "number" and keys:
        target[draw(st.sampled_from(keys))] = draw(
            st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True))
        )
    elif (
        kind == "rename" and isinstance(data, dict) and data.get("nodes") and isinstance(data["nodes"], dict)
    ):
        old = draw(st.sampled_from(sorted(map(str, data["nodes"])) or ["x"]))
        new = draw(st.sampled_from(NAMES))
        _rename(data, old, new)
    elif kind == "edge" and isinstance(data, dict) and isinstance(data.get("edges"), list):
        parts = [data[p] for p in ("inputs", "nodes") if isinstance(data.get(p), dict)]
        names = [str(k) for part in parts for k in part]
        names = names or ["x"]
        data["edges"].append({"from": draw(st.sampled_from(names)), "to": draw(st.sampled_from(names))})
    elif kind == "width" and isinstance(data, dict) and isinstance(data.get("nodes"), dict):
        for node in data["nodes"].values():
            if isinstance(node, dict) and "width" in node and draw(st.booleans()):
                node["width"] = draw(st.integers(1, 40))


def _rename(data: Any, old: str, new: str) -> Any:
    """Rename a node everywhere it appears (keys and string values)."""
    if isinstance(data, dict):
        items = [(new if k == old else k, _rename(v, old, new)) for k, v in data.items()]
        data.clear()
        data.update(items)
        return data
    if isinstance(data, list):
        data[:] = [_rename(v, old, new) for v in data]
        return data
    return new if data == old else data


@st.composite
def text_mutation(draw, text: str) -> str:
    kind = draw(st.sampled_from(["flip", "delete_line", "dup_line", "snippet", "huge", "tag", "alias"]))
    lines = text.splitlines(keepends=True) or [""]
    i = draw(st.integers(0, len(lines) - 1))
    if kind == "flip" and text:
        pos = draw(st.integers(0, len(text) - 1))
        return text[:pos] + draw(st.sampled_from(FLIP_CHARS)) + text[pos + 1 :]
    if kind == "delete_line":
        return "".join(lines[:i] + lines[i + 1 :])
    if kind == "dup_line":
        return "".join(lines[: i + 1] + lines[i:])
    if kind == "snippet":
        return "".join(lines[:i] + [draw(st.sampled_from(SNIPPETS))] + lines[i:])
    if kind == "huge":
        big = draw(st.sampled_from(["9" * 50, "1e400", "-1e400", ".nan", "-.inf", "9" * 5000, "1_000_000"]))
        digits = [j for j, ch in enumerate(text) if ch.isdigit()]
        if digits:
            j = draw(st.sampled_from(digits))
            return text[:j] + big + text[j + 1 :]
    if kind == "tag" and ": " in lines[i]:
        tags = ["!!str ", "!!int ", "!!float ", "!!python/name:os.system ", "!!set ", "!x "]
        tag = draw(st.sampled_from(tags))
        line = lines[i].replace(": ", ": " + tag, 1)
        return "".join(lines[:i] + [line] + lines[i + 1 :])
    if kind == "alias" and ": " in lines[i]:
        j = draw(st.integers(0, len(lines) - 1))
        if ": " in lines[j] and i != j:
            a = lines[i].replace(": ", ": &anc ", 1)
            b = lines[j].split(": ", 1)[0] + ": *anc\n"
            lines[i], lines[j] = a, b
            return "".join(lines)
    return text


@st.composite
def mutants(draw) -> str:
    name = draw(st.sampled_from(sorted(TEXTS)))
    text = TEXTS[name]
    if draw(st.booleans()):
        data = yaml.safe_load(text)
        for _ in range(draw(st.integers(1, 3))):
            draw(data_mutation(data))
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    for _ in range(draw(st.integers(0, 3))):
        text = draw(text_mutation(text))
    return text


_WORK = Path(tempfile.mkdtemp(prefix="dagrow-fuzz-"))


def _activation_values(spec) -> int:
    sg = analyze(spec)
    return sum(math.prod(s) for s in sg.shapes.values())


def check_mutant(text: str) -> str:
    """Load one mutant; return "refused" or "valid" (after compiling and checking its gradients)."""
    path = _WORK / "mutant.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    started = time.perf_counter()
    try:
        spec = load_spec(path)
    except SpecError as exc:
        assert time.perf_counter() - started < HANG
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.file == str(path) and d.line >= 1 and d.column >= 1 and d.message, d
        assert str(exc).startswith(f"{path}:")
        return "refused"
    assert time.perf_counter() - started < HANG
    expected = num_params(spec)
    # small models run for real; large ones on the meta device (shapes and autograd, no memory)
    small = expected <= 2_000_000 and _activation_values(spec) <= 2_000_000
    device = torch.device("cpu") if small else torch.device("meta")
    with device:
        model = compile(spec, seed=0 if small else None)
        xs = [torch.randn(2, *s.shape, dtype=torch.float32) for s in spec.inputs.values()]
        out = model(*xs)
        outs = out if isinstance(out, tuple) else (out,)
        assert len(outs) == len(spec.outputs)
        sum(o.sum() for o in outs).backward()
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == expected
    assert len({id(p) for p in params.values()}) == len(params)  # no weight shared between two names
    missing = [k for k, p in params.items() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    return "valid"


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not LONG,
    suppress_health_check=list(HealthCheck),
)


@seed(SEED)
@FUZZ_SETTINGS
@given(mutants())
def test_mutants_are_refused_cleanly_or_compile_exactly(text):
    check_mutant(text)


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_every_shipped_spec_passes_the_mutant_check_unmutated(path):
    assert check_mutant(path.read_text(encoding="utf-8")) == "valid"


def test_the_mutants_reach_both_outcomes():
    """The mutations are neither all fatal nor all harmless (otherwise the fuzz test would test little)."""
    outcomes = []

    @seed(1)
    @settings(max_examples=60, deadline=None, database=None, derandomize=True)
    @given(mutants())
    def collect(text):
        outcomes.append(check_mutant(text))

    collect()
    assert outcomes.count("valid") >= 3 and outcomes.count("refused") >= 3, outcomes
