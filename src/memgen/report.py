"""Captions and the scorecard for ``snakemake --report``: what each figure shows, which
config made it, and which paper claims the run reproduced.

The figure rules mark their PNG (or first format) with Snakemake's ``report()`` flag and
the generic caption template ``workflow/report/figure.rst``, which prints the caption
built here for ``family/name``: the family's title (its declaration), what the figure
shows (the figure function's docstring, memgen.figures) and the config block. The
workflow hands the captions to the template through the config (key
:data:`CONFIG_KEY`), not through rule params, and docstrings are not part of a figure's
code hash, so editing a caption never makes a figure stale.

The report's first page (``workflow/report/workflow.rst``) opens with the reproduction
scorecard (:func:`scorecard_rst`): the rows of ``data/summary/claims.csv`` (memgen.claims)
as a table, verdicts coloured, each row linking the figure that shows its claim. The
table is read when the Snakefile is parsed, i.e. when ``snakemake --report`` runs after
the workflow.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

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


VERDICT_STYLE = {"reproduced": "background:#dcf5dc;color:#0b5d1e",
                 "not reproduced": "background:#fbe0e0;color:#8b0f0f",
                 "not applicable": "background:#eeeeee;color:#555555"}
SCORECARD_COLUMNS = {"verdict": 8, "claim": 27, "paper": 12, "expected": 17, "measured": 9, "interval": 10,
                     "note": 9, "figure": 8}  # column -> width, % of the table


def _figure_path(config: dict, family: str, figure: str) -> str:
    """The file of a figure that the report shows (its PNG, else its first format)."""
    formats = config.get(family, {}).get("figures", {}).get("formats") or ["png"]
    return f"figures/{family}/{figure}.{'png' if 'png' in formats else formats[0]}"


def scorecard_html(rows: list[dict[str, str]], config: dict) -> str:
    """The scorecard as an HTML table (``id="memgen-scorecard"``), one row per claim
    (``data-claim="family/id"``, ``data-verdict``), each linking its figure in the report."""
    from memgen.claims import counts

    e = html.escape
    cell = "padding:2px 6px;border-bottom:1px solid #ddd;vertical-align:top;overflow-wrap:anywhere"
    # Snakemake's first page shows the description in a narrow column, centred in a box that
    # scrolls: widen the column, and start the box top left (centred overflow cannot be scrolled to)
    out = ["<style>.prose:has(#memgen-scorecard){max-width:none}"
           " div.items-center.justify-center:has(#memgen-scorecard){align-items:flex-start;justify-content:flex-start}"
           "</style>",
           f'<p id="memgen-scorecard-counts">{e(counts(rows))}</p>',
           '<table id="memgen-scorecard" style="font-size:0.85em;border-collapse:collapse;width:66rem;'
           'table-layout:fixed">',
           "<colgroup>" + "".join(f'<col style="width:{w}%">' for w in SCORECARD_COLUMNS.values()) + "</colgroup>",
           "<thead><tr>" + "".join(f'<th style="{cell};text-align:left">{c}</th>' for c in SCORECARD_COLUMNS)
           + "</tr></thead><tbody>"]
    for r in rows:
        path = _figure_path(config, r["family"], r["figure"])
        link = (f'<a href="javascript:app.showResultInfo(\'{quote(path, safe="/")}\')" '
                f'data-figure="{e(path)}">{e(r["figure"])}</a>')
        values = {"verdict": e(r["verdict"]), "claim": f"<b>{e(r['family'])}/{e(r['id'])}</b>: {e(r['claim'])}",
                  "paper": e(f"{r['paper']}, {r['where']}"), "expected": e(r["expected"]),
                  "measured": e(r["measured"]), "interval": e(r["interval"]), "note": e(r["reason"]), "figure": link}
        style = {"verdict": VERDICT_STYLE.get(r["verdict"], "")}
        out.append(f'<tr data-claim="{e(r["family"])}/{e(r["id"])}" data-verdict="{e(r["verdict"])}">'
                   + "".join(f'<td style="{cell};{style.get(c, "")}">{values[c]}</td>' for c in SCORECARD_COLUMNS)
                   + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def scorecard_rst(config: dict, path: str | Path | None = None) -> str:
    """The report's scorecard section (reStructuredText with the table as raw HTML), from
    ``data/summary/claims.csv`` (``path``); a note when the workflow has not made it."""
    from memgen.claims import CSV, read_csv

    path = Path(path or CSV)
    head = "Reproduction scorecard\n----------------------\n\n"
    if not path.is_file():
        return head + f"No scorecard yet: ``{path}`` does not exist (run the workflow, then the report).\n"
    rows = [r for r in read_csv(path) if r["family"] in config["families"]]
    body = scorecard_html(rows, config)
    return (head + "Each paper claim the families declare (``memgen.claims``), checked from this run's "
            f"summaries (``{path}``); the figure column opens the figure that shows it.\n\n"
            ".. raw:: html\n\n" + _literal(body) + "\n")


def report_info(config: dict, configfiles: list[str]) -> dict:
    """What the report templates read from ``config[CONFIG_KEY]``: the config files (as
    Snakemake lists them: ``workflow.configfiles``), the family titles, and every figure's
    caption keyed ``family/name``, and the scorecard section (:func:`scorecard_rst`)."""
    families = config["families"]
    source = config_source(configfiles)
    return {
        "configfiles": source,
        "titles": {f: titles()[f] for f in families},
        "captions": {f"{f}/{name}": figure_caption(f, name, config[f], source)
                     for f in families for name in captions(f)},
        "scorecard": scorecard_rst(config),
    }
