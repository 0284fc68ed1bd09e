"""The card rendered from Jinja templates: markdown for the model version's description, HTML as a page.

The templates are ``pipelines/templates/model_card.md.j2`` and ``model_card.html.j2`` (with the
partials ``model_card_macros.html.j2`` and ``model_card_chart.html.j2``). HTML templates escape every
``{{ value }}`` as ``html.escape`` does (None as nothing); markdown templates escape with ``md``.
"""

from __future__ import annotations

import html
from typing import Any

import jinja2
from markupsafe import Markup

from pipelines.model_card.charts import slice_chart
from pipelines.model_card.content import ARTIFACT_DIR, DESCRIPTION_LIMIT, FILES, METRICS
from pipelines.model_card.text import (
    best_worst,
    code,
    cut,
    fairness_line,
    label,
    mapping,
    md,
    md_to_html,
    names,
    num,
    personal_text,
    size,
    verdict,
    when,
    yes,
)

# Slices kept at each end of a table as the description shrinks (None: all; 0: no table).
KEEP_LEVELS: tuple[int | None, ...] = (None, 8, 5, 3, 2, 1, 0)
SMALL_TABLE = 5  # rows: always shown whole
CUT_NOTE = "\n\n_(cut to fit the description limit: see the full card in the run's artifacts)_\n"


def to_markdown(card: dict[str, Any], *, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card as markdown for the model version's description, at most ``limit`` UTF-8 bytes.

    Too long: the longest slice table shrinks first, to its 8, 5, 3, 2, 1 best and worst
    slices and then to a note, and so on until the card fits; then free text is shortened.
    Last resort, a hard cut. The full card is always in the run's artifacts.
    """
    metric = card["slices"]["metric"]
    tables = card["slices"]["columns"]
    markdown = ""
    for brief in (False, True):
        keep: dict[str, int | None] = dict.fromkeys(tables)
        while True:
            markdown = _markdown(card, keep, brief)
            if size(markdown) <= limit:
                return markdown
            shown = {c: len(top_bottom(tables[c], metric, k)[0]) for c, k in keep.items() if k != 0}
            if not shown:
                break
            column = max(shown, key=shown.__getitem__)
            keep[column] = KEEP_LEVELS[KEEP_LEVELS.index(keep[column]) + 1]
    budget = limit - size(CUT_NOTE)
    return markdown.encode()[:budget].decode(errors="ignore").rstrip() + CUT_NOTE


def to_html(card: dict[str, Any]) -> str:
    """The card as a standalone page: inline CSS and SVG charts, no scripts, no external assets."""
    return _ENV.get_template("model_card.html.j2").render(card=card)


def top_bottom(
    rows: list[dict[str, Any]], metric: str, keep: int | None
) -> tuple[list[dict[str, Any]], str | None]:
    """All rows, or the ``keep`` best and worst slices by candidate score, and a note saying so.

    Best and worst among the slices the slice check scored; without two of those, among
    all slices with a score. A small table is always shown whole.
    """
    if keep is None or len(rows) <= max(2 * keep + 1, SMALL_TABLE):
        return rows, None
    scores = [r for r in rows if r[metric].get("candidate") is not None]
    checked = [r for r in scores if r["scored"]]
    pool = sorted(checked if len(checked) >= 2 else scores, key=lambda r: -r[metric]["candidate"])
    shown = pool if len(pool) <= 2 * keep else [*pool[:keep], *pool[-keep:]]
    return shown, (
        f"_Showing the {keep} best and {keep} worst of {len(rows)} slices by candidate score; "
        f"{len(rows) - len(shown)} more in the full card._"
    )


def slice_models(rows: list[dict[str, Any]], metric: str) -> list[str]:
    """The models scored in a slice table: the candidate first, then the others by name."""
    return sorted({m for r in rows for m in r[metric]}, key=lambda m: (m != "candidate", m))


def _markdown(card: dict[str, Any], keep: dict[str, int | None], brief: bool) -> str:
    """One rendering: ``keep[column]`` best and worst slices (None: all, 0: none); ``brief`` text."""
    unscored = any(not r["scored"] for rows in card["slices"]["columns"].values() for r in rows)
    page = _ENV.get_template("model_card.md.j2").render(
        card=card, keep=keep, brief=brief, width=160 if brief else None, unscored=unscored
    )
    return page.strip() + "\n"


@jinja2.pass_eval_context
def _finalize(eval_ctx: jinja2.nodes.EvalContext, value: Any) -> Any:
    """In an HTML template, each ``{{ value }}`` escaped as ``html.escape`` does, None as nothing."""
    if not eval_ctx.autoescape or hasattr(value, "__html__"):
        return value
    return Markup(html.escape("" if value is None else str(value)))


def _numeric_cell(value: Any) -> bool:
    """Whether a table cell holds a number (digits, n/a), to right-align it."""
    cell = str(value) if hasattr(value, "__html__") else html.escape("" if value is None else str(value))
    return cell == "n/a" or cell.replace(",", "").replace(".", "").lstrip("-").isdigit()


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("pipelines", "templates"),
    autoescape=jinja2.select_autoescape(["html", "html.j2"]),
    finalize=_finalize,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)
_ENV.filters.update(
    when=when,
    num=num,
    yes=yes,
    verdict=verdict,
    label=label,
    names=names,
    mapping=mapping,
    md=md,
    cell=lambda value: md(value, table=True),
    code=code,
    cut=cut,
    personal=personal_text,
    fairness_line=fairness_line,
    best_worst=best_worst,
    md_html=md_to_html,
)
_ENV.tests["numeric_cell"] = _numeric_cell
_ENV.globals.update(
    artifact_dir=ARTIFACT_DIR,
    files=FILES,
    metric_names=METRICS,
    top_bottom=top_bottom,
    slice_models=slice_models,
    slice_chart=slice_chart,
)
