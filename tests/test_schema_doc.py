"""config/README.md is generated from the config schema and kept up to date."""

import subprocess
import sys

from conftest import ROOT
from memgen import config, schema_doc


def _leaves(node, path=""):
    for name, sub in node.get("properties", {}).items():
        key = f"{path}.{name}" if path else name
        yield key, sub
        yield from _leaves(sub, key)


def test_config_readme_is_up_to_date():
    expected = schema_doc.render(config.load_schema())
    current = (ROOT / "config" / "README.md").read_text()
    assert current == expected, ("config/README.md is out of date with workflow/schemas/config.schema.yaml: "
                                 "run `python -m memgen.schema_doc`")


def test_check_mode_names_the_command(tmp_path, capsys):
    out = tmp_path / "README.md"
    out.write_text("stale\n")
    assert schema_doc.main(["--output", str(out), "--check"]) == 1
    assert "python -m memgen.schema_doc" in capsys.readouterr().err
    assert schema_doc.main(["--output", str(out)]) == 0
    assert schema_doc.main(["--output", str(out), "--check"]) == 0


def test_every_key_is_described_and_listed():
    schema = config.load_schema()
    assert schema_doc.missing_descriptions(schema) == []
    text = schema_doc.render(schema)
    for key, sub in _leaves(schema):
        block, _, name = key.rpartition(".")
        section = text.index(f"## `{block}`" if block else "## Top level")
        assert f"| `{name}` |" in text[section:], key
        if "default" in sub and sub.get("type") != "object":
            assert schema_doc._value(sub["default"]) in text, key


def test_defaults_and_ranges_are_rendered():
    text = schema_doc.render(config.load_schema())
    assert "| `d` | integer | required | >= 1, <= 1000 |" in text
    assert "| `max_dgrad` | number | `0.0001` | > 0 |" in text
    assert "| `classes` | list of integer | `[0, 1]` | exactly 2 items, each >= 0, <= 9 |" in text
    assert "| `formats` | list of one of `pdf`, `png`, `svg` | `[pdf, png]` | at least 1 item |" in text


def test_generator_imports_no_snakemake():
    code = "import sys, memgen.schema_doc; sys.exit('snakemake' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
