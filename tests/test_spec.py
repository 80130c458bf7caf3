"""The spec language: loading, canonical YAML, the JSON Schema, and one test per class of error.

Every error test checks the three things a user needs: the file, the line (and column) and the
element of the spec the message is about.
"""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest

from dagrow import GraphSpec, SpecError, json_schema, load_spec
from dagrow.spec import MAX_WIDTH, parse_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


def diagnostics(tmp_path: Path, text: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(path), info.value.diagnostics


def only(tmp_path: Path, text: str):
    """The single diagnostic of an invalid spec, with the file checked."""
    file, diags = diagnostics(tmp_path, text)
    assert len(diags) == 1, [str(d) for d in diags]
    (d,) = diags
    assert d.file == file
    assert str(d).startswith(f"{file}:{d.line}:{d.column}: ")
    return d


MLP = """
version: 1
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


# ---------------------------------------------------------------------------------------------
# loading and canonical form
# ---------------------------------------------------------------------------------------------


def test_loads_path_str_and_text(tmp_path):
    path = tmp_path / "mlp.yaml"
    path.write_text(MLP)
    a, b, c = load_spec(path), load_spec(str(path)), load_spec(MLP)
    assert a == b == c
    assert load_spec(a) is a
    assert list(a.nodes) == ["h", "out"]
    assert a.edges[0].op.type == "linear"
    assert a.nodes["out"].activation.name == "identity"
    assert a.nodes["h"].bias is True


def test_shorthands_and_full_forms_are_the_same_spec():
    full = MLP.replace("activation: relu", "activation: {name: relu}").replace(
        "{from: x, to: h}", "{from: x, to: h, op: {type: linear}}"
    )
    assert load_spec(full) == load_spec(MLP)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_canonical_yaml_round_trip(path):
    spec = load_spec(path)
    text = spec.to_yaml()
    again = load_spec(text)
    assert again == spec
    assert again.to_yaml() == text
    assert GraphSpec.model_validate(json.loads(spec.to_json())) == spec


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_example_specs_point_at_the_schema(path):
    assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=../dagrow.schema.json"


def test_specs_are_frozen():
    spec = load_spec(MLP)
    with pytest.raises(ValueError):
        spec.name = "other"  # type: ignore[misc]


def test_edge_keys_and_lookup():
    spec = load_spec(MLP)
    assert spec.edge("x", "h").key == "x__h"
    with pytest.raises(KeyError, match="no edge h->x"):
        spec.edge("h", "x")


# ---------------------------------------------------------------------------------------------
# JSON Schema
# ---------------------------------------------------------------------------------------------


def test_shipped_schema_is_up_to_date():
    shipped = json.loads((ROOT / "dagrow.schema.json").read_text())
    assert shipped == json_schema(), "regenerate it: dagrow schema -o dagrow.schema.json"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_example_specs_validate_against_the_schema(path):
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())


def test_schema_rejects_a_misspelt_key():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    data = yaml.safe_load(MLP.replace("width: 3", "widht: 3"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json_schema())


# ---------------------------------------------------------------------------------------------
# one test per class of error
# ---------------------------------------------------------------------------------------------


def test_yaml_syntax_error(tmp_path):
    d = only(
        tmp_path,
        """
        version: 1
        inputs:
          x: {shape: [4]
        nodes:
          h: {width: 3}
        """,
    )
    assert "YAML syntax error" in d.message
    assert d.line in (3, 4)  # the unclosed mapping; PyYAML notices it on the next line


def test_tab_indentation_is_a_syntax_error(tmp_path):
    d = only(tmp_path, "inputs:\n\tx: {shape: [4]}\n")
    assert (d.line, "YAML syntax error") == (2, d.message.split(":")[0])


def test_misspelt_key_with_did_you_mean(tmp_path):
    d = only(tmp_path, MLP.replace("h: {width: 3, activation: relu}", "h: {widht: 3, activation: relu}"))
    assert (d.line, d.column) == (5, 7)
    assert d.message == "node 'h': unknown key 'widht' (did you mean 'width'?)"


def test_misspelt_key_inside_an_op_and_at_the_top(tmp_path):
    text = MLP.replace("{from: h, to: out}", "{from: h, to: out, op: {type: linear, kernal: 3}}")
    text = text.replace("outputs: [out]", "outputs: [out]\ngrowht: {widen: all}")
    file, diags = diagnostics(tmp_path, text)
    messages = {(d.line, d.message) for d in diags}
    assert (9, "edge h->out (edges[1]): unknown key 'kernal' (did you mean 'kernel'?)") in messages
    assert (11, "spec: unknown key 'growht' (did you mean 'growth'?)") in messages


def test_unknown_op_and_activation_names(tmp_path):
    text = MLP.replace("activation: relu", "activation: rellu").replace(
        "{from: x, to: h}", "{from: x, to: h, op: linaer}"
    )
    _, diags = diagnostics(tmp_path, text)
    by_line = {d.line: d.message for d in diags}
    assert by_line[5].startswith("node 'h': unknown activation 'rellu'")
    assert by_line[5].endswith("(did you mean 'relu'?)")
    assert by_line[8].startswith("edge x->h (edges[0]): unknown op 'linaer'")
    assert by_line[8].endswith("(did you mean 'linear'?)")


def test_duplicate_key(tmp_path):
    d = only(tmp_path, MLP.replace("  out: {width: 2}", "  h: {width: 5}\n  out: {width: 2}"))
    assert (d.line, d.column) == (6, 3)
    assert d.message == "duplicate key 'h' in nodes (first at line 5)"


def test_duplicate_key_inside_an_edge(tmp_path):
    d = only(tmp_path, MLP.replace("{from: h, to: out}", "{from: h, to: out, to: h}"))
    assert d.line == 9
    assert d.message == "duplicate key 'to' in edges[1] (first at line 9)"


def test_edge_from_unknown_node(tmp_path):
    d = only(tmp_path, MLP.replace("{from: h, to: out}", "{from: hh, to: out}"))
    assert d.line == 9
    assert d.message == "edge hh->out (edges[1]): unknown source 'hh' (did you mean 'h'?)"


def test_edge_to_unknown_node(tmp_path):
    d = only(tmp_path, MLP.replace("  - {from: h, to: out}", "  - {from: h, to: out}\n  - {from: x, to: ot}"))
    assert d.line == 10
    assert d.message == "edge x->ot (edges[2]): unknown target 'ot' (did you mean 'out'?)"


def test_edge_into_an_input(tmp_path):
    d = only(tmp_path, MLP.replace("  - {from: h, to: out}", "  - {from: h, to: out}\n  - {from: h, to: x}"))
    assert d.line == 10
    assert "edge h->x (edges[2]): an edge cannot write into the input 'x'" == d.message


def test_duplicate_edge(tmp_path):
    edge = "  - {from: h, to: out}"
    d = only(tmp_path, MLP.replace(edge, f"{edge}\n{edge}"))
    assert d.line == 10
    assert d.message == "edge h->out (edges[2]): duplicate edge h->out (first as edges[1])"


def test_cycle_is_printed(tmp_path):
    d = only(
        tmp_path,
        """
        inputs:
          x: {shape: [4]}
        nodes:
          a: {width: 3}
          b: {width: 3}
          c: {width: 3}
        edges:
          - {from: x, to: a}
          - {from: a, to: b}
          - {from: b, to: c}
          - {from: c, to: a}
        outputs: [c]
        """,
    )
    assert d.line == 11
    assert d.message == "edge c->a (edges[3]): cycle: a -> b -> c -> a"


def test_node_without_path_to_an_output(tmp_path):
    d = only(
        tmp_path,
        MLP.replace("  out: {width: 2}", "  out: {width: 2}\n  dead: {width: 2}").replace(
            "  - {from: h, to: out}", "  - {from: h, to: out}\n  - {from: h, to: dead}"
        ),
    )
    assert d.line == 7
    assert d.message == "node 'dead': node 'dead' has no path to any output (it would be unused)"


def test_node_without_path_from_an_input(tmp_path):
    _, diags = diagnostics(
        tmp_path,
        """
        inputs:
          x: {shape: [4]}
        nodes:
          a: {width: 3}
          orphan: {width: 3}
          child: {width: 3}
          out: {width: 2}
        edges:
          - {from: x, to: a}
          - {from: orphan, to: child}
          - {from: child, to: out}
          - {from: a, to: out}
        outputs: [out]
        """,
    )
    assert [(d.line, d.message) for d in diags] == [
        (5, "node 'orphan': node 'orphan' has no incoming edge"),
        (6, "node 'child': node 'child' has no path from any input"),
    ]


def test_non_input_node_without_incoming_edge(tmp_path):
    d = only(
        tmp_path,
        MLP.replace("  out: {width: 2}", "  out: {width: 2}\n  lonely: {width: 2}").replace(
            "  - {from: h, to: out}", "  - {from: h, to: out}\n  - {from: lonely, to: out}"
        ),
    )
    assert (d.line, d.column) == (7, 3)
    assert d.message == "node 'lonely': node 'lonely' has no incoming edge"


def test_unused_input(tmp_path):
    d = only(tmp_path, MLP.replace("  x: {shape: [4]}", "  x: {shape: [4]}\n  z: {shape: [2]}"))
    assert d.line == 4
    assert d.message == "input 'z': input 'z' is not used by any output"


def test_conv2d_on_a_flat_node(tmp_path):
    d = only(
        tmp_path,
        """
        inputs:
          x: {shape: [16]}
        nodes:
          c: {channels: 4}
        edges:
          - {from: x, to: c, op: conv2d}
        outputs: [c]
        """,
    )
    assert d.line == 6
    assert d.message.startswith("edge x->c (edges[0]): conv2d needs an image input")
    assert "[16]" in d.message


def test_linear_on_an_unflattened_image(tmp_path):
    d = only(
        tmp_path,
        """
        inputs:
          img: {shape: [1, 8, 8]}
        nodes:
          h: {width: 4}
        edges:
          - {from: img, to: h}
        outputs: [h]
        """,
    )
    assert d.line == 6
    assert d.message == (
        "edge img->h (edges[0]): linear needs a flat input but its source has shape "
        "[1, 8, 8] (put a flatten edge before it)"
    )


def test_flatten_width_mismatch_and_image_op_into_flat_node(tmp_path):
    _, diags = diagnostics(
        tmp_path,
        """
        inputs:
          img: {shape: [2, 4, 4]}
        nodes:
          c: {width: 8}
          f: {width: 31}
        edges:
          - {from: img, to: c, op: conv2d}
          - {from: img, to: f, op: flatten}
          - {from: c, to: f}
        outputs: [f]
        """,
    )
    by_line = {d.line: d.message for d in diags}
    assert "conv2d writes an image, so its target node needs 'channels'" in by_line[7]
    assert by_line[8] == (
        "edge img->f (edges[1]): flatten of [2, 4, 4] gives 32 features but the target has width 31"
    )


def test_edges_summed_with_different_shapes(tmp_path):
    d = only(
        tmp_path,
        """
        inputs:
          x: {shape: [4]}
          y: {shape: [3]}
        nodes:
          h: {width: 3}
        edges:
          - {from: x, to: h, op: identity}
          - {from: y, to: h}
        outputs: [h]
        """,
    )
    assert d.line == 7
    assert d.message == "edge x->h (edges[0]): identity from a source of width 4 into a node of width 3"


def test_output_that_is_not_a_node(tmp_path):
    _, diags = diagnostics(tmp_path, MLP.replace("outputs: [out]", "outputs: [out, hh, x]"))
    assert [(d.line, d.column, d.message) for d in diags] == [
        (10, 16, "outputs: output 'hh' is not a node (did you mean 'h'?)"),
        (10, 20, "outputs: output 'x' is an input"),
    ]


@pytest.mark.parametrize("width", [0, -3])
def test_width_not_positive(tmp_path, width):
    d = only(tmp_path, MLP.replace("width: 3", f"width: {width}"))
    assert (d.line, d.column) == (5, 7)
    assert d.message.startswith("node 'h': nodes.h.width: Input should be greater than 0")


def test_width_absurdly_large_is_refused_before_allocating(tmp_path):
    d = only(tmp_path, MLP.replace("width: 3", "width: 1000000000000"))
    assert d.line == 5
    assert d.message.startswith("node 'h': nodes.h.width: Input should be less than or equal to")
    assert str(MAX_WIDTH) in d.message


def test_too_many_parameters_is_refused_before_allocating(tmp_path):
    # every width is legal, but the model would need about 4 TB: refused by counting, not by allocating
    d = only(tmp_path, MLP.replace("[4]", "[1000000]").replace("width: 3", "width: 1000000"))
    assert d.message.startswith("spec: the model would have 1,000,00")
    assert "parameters" in d.message and d.line == 4


def test_names_must_be_identifiers_without_double_underscore(tmp_path):
    _, diags = diagnostics(tmp_path, MLP.replace("h", "h__1").replace("sh__1ape", "shape"))
    assert diags[0].line == 5
    assert "'h__1' contains '__'" in diags[0].message
    _, diags = diagnostics(tmp_path, MLP.replace(" h", " 1h").replace("to: h}", "to: 1h}"))
    assert diags[0].message.startswith("node '1h'") and "starting with a letter" in diags[0].message


def test_node_needs_exactly_one_size(tmp_path):
    d = only(tmp_path, MLP.replace("width: 3", "width: 3, channels: 2"))
    assert d.line == 5
    assert "exactly one of 'width' (flat) or 'channels' (image)" in d.message


def test_growth_names_unknown_node(tmp_path):
    d = only(tmp_path, MLP + "growth: {widen: [h, hx]}\n")
    assert d.line == 11
    assert d.message == "growth: cannot widen unknown node 'hx' (did you mean 'h'?)"


def test_missing_section_empty_file_and_non_mapping(tmp_path):
    d = only(tmp_path, MLP.replace("outputs: [out]\n", ""))
    assert d.message == "spec: outputs: Field required"
    assert only(tmp_path, "").message == "the spec is empty"
    assert only(tmp_path, "- a\n- b\n").message.startswith("a spec must be a mapping")


def test_missing_file(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}:1:1: cannot read spec: No such file or directory"


def test_all_problems_reported_at_once(tmp_path):
    text = MLP.replace("width: 3", "widht: 3").replace("width: 2", "width: 0")
    _, diags = diagnostics(tmp_path, text)
    assert [d.line for d in diags] == [5, 6]


def test_parse_spec_without_a_file():
    with pytest.raises(SpecError) as info:
        parse_spec(
            {
                "inputs": {"x": {"shape": [2]}},
                "nodes": {"h": {"width": 1}},
                "edges": [{"from": "y", "to": "h"}],
                "outputs": ["h"],
            }
        )
    assert str(info.value).startswith("<spec>:1:1: edge y->h (edges[0]): unknown source 'y'")
