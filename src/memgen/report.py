"""Captions for ``snakemake --report``: what each figure shows and which config made it.

The figure rules mark their PNG (or first format) with Snakemake's ``report()`` flag and
the generic caption template ``workflow/report/figure.rst``, which prints the caption
built here for ``family/name``: the family's title (its declaration), what the figure
shows (the figure function's docstring, memgen.figures) and the config block. The
workflow hands the captions to the template through the config (key
:data:`CONFIG_KEY`), not through rule params, and docstrings are not part of a figure's
code hash, so editing a caption never makes a figure stale.
"""

from __future__ import annotations

import os

import yaml

from memgen.provenance import params_hash

CONFIG_KEY = "_memgen_report"
DEFAULT_CONFIG = "config/config.yaml"  # the Snakefile's `configfile:`


def titles() -> dict[str, str]:
    """Family -> its title (the report category), from the family declarations."""
    from memgen.families import registry

    return {name: fam.title for name, fam in registry().items()}


def captions(family: str) -> dict[str, str]:
    """Figure -> what it shows: the figure function's docstring (memgen.figures)."""
    from memgen.families import family as declared
    from memgen.figures import specs

    return {name: spec.caption for name, spec in specs(declared(family)).items()}


def _escape(text: str) -> str:
    """Plain text as reStructuredText (``|x|`` and ``*`` are markup there)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")


def _literal(text: str, indent: str = "   ") -> str:
    return "\n".join(indent + line if line else "" for line in text.splitlines())


def figure_caption(family: str, name: str, block: dict, source: str) -> str:
    """reStructuredText caption of figure ``name`` of ``family``: what it shows, then the
    config file(s) (``source``, see :func:`config_source`) and the family's config block
    (with its sha256) that produced it."""
    text = yaml.safe_dump(block, sort_keys=True, default_flow_style=None, width=100).rstrip()
    return (f"**{titles()[family]}** -- ``{name}``\n\n"
            f"{_escape(captions(family)[name])}\n\n"
            f"Produced from config {source}, block ``{family}`` "
            f"(sha256 ``{params_hash(block)[:12]}``):\n\n"
            f".. code-block:: yaml\n\n{_literal(text)}\n")


def config_source(configfiles: list[str], default: str = DEFAULT_CONFIG) -> str:
    """The config files of a run as a reader needs them: Snakemake loads the workflow's
    ``configfile:`` (``default``) and puts the ``--configfile`` files on top of it."""
    files = [os.path.relpath(f) for f in configfiles]
    given = [f for f in files if f != default]
    if not given:
        return default
    return ", ".join(given) + (f" (on top of {default})" if default in files else "")


def report_info(config: dict, configfiles: list[str]) -> dict:
    """What the report templates read from ``config[CONFIG_KEY]``: the config files (as
    Snakemake lists them: ``workflow.configfiles``), the family titles, and every figure's
    caption keyed ``family/name``."""
    families = config["families"]
    source = config_source(configfiles)
    return {
        "configfiles": source,
        "titles": {f: titles()[f] for f in families},
        "captions": {f"{f}/{name}": figure_caption(f, name, config[f], source)
                     for f in families for name in captions(f)},
    }
