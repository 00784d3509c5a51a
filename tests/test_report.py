"""Captions of the HTML report (memgen.report): one per figure of every family, valid
reStructuredText that renders the caption and the config block that produced it."""

import importlib

import pytest
import yaml
from docutils.core import publish_parts

from memgen import config
from memgen.figures import FAMILIES
from memgen.report import CAPTIONS, TITLES, config_source, report_info

from test_config import CONFIG_DIR


@pytest.mark.parametrize("family", FAMILIES)
def test_every_figure_has_a_caption(family):
    module = importlib.import_module(f"memgen.experiments.{family}")
    assert tuple(CAPTIONS[family]) == tuple(module.FIGURES) and TITLES[family]


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
