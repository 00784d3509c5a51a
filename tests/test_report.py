"""Captions of the HTML report (memgen.report): one per figure of every family (the
figure function's docstring), valid reStructuredText that renders the caption and the
config block that produced it."""

import ast
import importlib

import pytest
import yaml
from docutils.core import publish_parts

from memgen import config
from memgen.families import registry
from memgen.figures import specs
from memgen.report import captions, config_source, report_info, titles

from test_config import CONFIG_DIR


@pytest.mark.parametrize("family", sorted(registry()))
def test_every_figure_function_has_a_caption_and_is_found_from_source(family):
    fam = registry()[family]
    module = importlib.import_module(fam.figure_module)
    decorated = [n for n, f in vars(module).items() if callable(f) and hasattr(f, "needs")]
    assert sorted(specs(fam)) == sorted(decorated) and len(decorated) >= 3
    for name, spec in specs(fam).items():
        fn = getattr(module, name)
        assert spec.caption == " ".join(fn.__doc__.split()) == captions(family)[name]
        assert spec.tables == tuple(fn.needs)
        assert set(spec.tables) <= set(fam.summary.outputs)  # it reads the family's summary tables
    assert titles()[family] == fam.title
    ast.parse(open(module.__file__).read())


CAPTIONS = {f: captions(f) for f in registry()}


def test_captions_render_with_the_config_block():
    cfg = config.load(CONFIG_DIR / "test.yaml")
    info = report_info(cfg, [str(CONFIG_DIR / "test.yaml"), "config/config.yaml"])
    assert info["configfiles"].endswith("config/test.yaml (on top of config/config.yaml)")
    assert len(info["captions"]) == sum(len(CAPTIONS[f]) for f in cfg["families"])
    for key, rst in info["captions"].items():
        family, name = key.split("/")
        html = publish_parts(rst, writer="html", settings_overrides={"report_level": 2,
                                                                          "halt_level": 2})["body"]
        assert name in html and "system-message" not in html
        # the block is shown as YAML that reads back to the config's block
        block = rst.split(".. code-block:: yaml\n\n", 1)[1]
        assert yaml.safe_load("\n".join(line[3:] for line in block.splitlines())) == cfg[family]
    # | and * in a caption are text, not reStructuredText markup
    html = publish_parts(info["captions"]["time_scale/kernel_change"], writer="html")["body"]
    assert "||Theta_T - Theta_0|| / ||Theta_0||" in html


def test_config_source():
    assert config_source(["config/config.yaml"]) == "config/config.yaml"
    assert config_source(["a.yaml", "b.yaml", "config/config.yaml"]) == "a.yaml, b.yaml (on top of config/config.yaml)"


def _claim_rows():
    from memgen.claims import VERDICTS, specs

    rows = []
    for family in registry():
        for i, (name, s) in enumerate(specs(family).items()):
            rows.append({"family": family, "id": name, "paper": s.paper, "where": s.where, "claim": s.statement,
                         "expected": s.expected, "measured": "0.5 <b>", "interval": "[0.1, 1]",
                         "verdict": VERDICTS[i % 3], "reason": "a | reason *", "figure": s.figure})
    return rows


def test_scorecard_section_has_one_coloured_row_per_claim_linking_its_figure(tmp_path):
    import re

    from memgen.claims import write_csv
    from memgen.report import VERDICT_STYLE, scorecard_rst

    cfg = config.load(CONFIG_DIR / "test.yaml")
    rows = _claim_rows()
    write_csv(rows, tmp_path / "claims.csv")
    rst = "memgen\n======\n\n" + scorecard_rst(cfg, tmp_path / "claims.csv")  # a section of workflow.rst
    html = publish_parts(rst, writer="html", settings_overrides={"report_level": 2, "halt_level": 2})["html_body"]
    assert "Reproduction scorecard" in html and 'id="memgen-scorecard"' in html and "system-message" not in html
    found = re.findall(r'<tr data-claim="([\w/]+)" data-verdict="([\w ]+)"><td style="([^"]*)">', html)
    assert [(c, v) for c, v, _ in found] == [(f"{r['family']}/{r['id']}", r["verdict"]) for r in rows]
    assert all(style.endswith(VERDICT_STYLE[v]) for _, v, style in found)  # the verdict cell is coloured by the verdict
    for r in rows:  # each row opens its figure's entry in the report (the PNG the figure rule marks)
        assert f"javascript:app.showResultInfo('figures/{r['family']}/{r['figure']}.png')" in html
    assert "0.5 &lt;b&gt;" in html and "a | reason *" in html  # text is escaped, never markup
    assert "No scorecard yet" in scorecard_rst(cfg, tmp_path / "none.csv")
