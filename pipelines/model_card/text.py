"""How the card's values read: numbers, times, verdicts, names, and the little markdown of its sentences.

Shared by the card's own sentences (``content``) and both renderings, where the Jinja templates use
them as filters (``render``).
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup

NAMES_SHOWN = 8  # values listed by name before "+N more"


def when(value: str | None) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM UTC``; anything else as given."""
    if not value:
        return "n/a"
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def num(value: Any, digits: int = 4) -> str:
    """Floats to ``digits`` decimals, integers with thousands separators, None/NaN as n/a."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def yes(value: Any) -> str:
    """A check's outcome in a markdown table: yes, **no** or n/a."""
    return "n/a" if value is None else ("yes" if value else "**no**")


def verdict(passed: Any) -> str:
    """The gate's outcome in words: PASSED, REJECTED or n/a."""
    return "n/a" if passed is None else ("PASSED" if passed else "REJECTED")


def label(metric: str) -> str:
    """A metric's display name (ROC AUC, PR AUC; others as named)."""
    return {"roc_auc": "ROC AUC", "pr_auc": "PR AUC"}.get(metric, metric)


def names(values: list[str], shown: int = NAMES_SHOWN) -> str:
    """The first ``shown`` values, comma-separated, and how many more there are."""
    values = list(values)
    more = f" (+{len(values) - shown} more)" if len(values) > shown else ""
    return ", ".join(values[:shown]) + more


def mapping(values: dict[str, Any]) -> str:
    """``key=value`` pairs, comma-separated, numbers formatted as ``num`` does."""
    return ", ".join(f"{k}={num(v)}" for k, v in values.items())


def size(text: str) -> int:
    """The length of ``text`` in UTF-8 bytes."""
    return len(text.encode("utf-8"))


def md(value: Any, table: bool = False) -> str:
    """Markdown-safe text on one line: raw HTML escaped outside `code` spans; in a table, no pipes."""
    text = "" if value is None else " ".join(str(value).split())
    pieces = text.split("`")
    if len(pieces) % 2 == 0:  # an unbalanced backtick: treat it as text
        pieces = [text.replace("`", "'")]
    text = "`".join(
        p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") if i % 2 == 0 else p
        for i, p in enumerate(pieces)
    )
    return text.replace("|", "\\|") if table else text


def code(value: Any) -> str:
    """``value`` as a markdown code span (backticks inside become quotes)."""
    return "`" + ("" if value is None else str(value)).replace("`", "'") + "`"


def cut(value: Any, width: int | None = None) -> str:
    """Text on one line, shortened to ``width`` characters with "..." (None: whole)."""
    text = "" if value is None else " ".join(str(value).split())
    return text[: width - 3].rstrip() + "..." if width and len(text) > width else text


def personal_text(personal: dict[str, Any]) -> str:
    """What the card says about each personal-data column: used as a feature or not, and where it is."""
    if not personal["columns"]:
        return "none declared"
    parts = []
    for column in personal["columns"]:
        if column in personal["used_as_features"]:
            parts.append(f"{column}: used as a feature (allowed by config)")
        else:
            where = "in the snapshot" if column in personal["in_snapshot"] else "not in the training data"
            parts.append(f"{column}: not used as a feature ({where})")
    return "; ".join(parts)


def fairness_line(fairness: dict[str, Any]) -> str:
    """The slice check's verdict and settings in one sentence (with **bold**)."""
    if not fairness["evaluated"]:
        return "Not evaluated for this version."
    if fairness["passed"]:
        outcome = "Within the limit"
    else:
        outcome = "Gap too wide" + (": the gate rejects" if fairness["gating"] else " (reported only)")
    mode = "gating" if fairness["gating"] else "reported, not gating"
    rows = f", slices with at least {fairness['min_rows']} rows" if fairness.get("min_rows") else ""
    return f"**{outcome}**: best minus worst slice at most {num(fairness['max_gap'])} ({mode}{rows})."


def best_worst(entry: dict[str, Any] | None) -> str:
    """A best or worst slice as ``value score``; ``-`` when there is none."""
    return f"{entry['value']} {num(entry['score'])}" if entry else "-"


def md_to_html(text: str) -> Markup:
    """The little markdown the shared sentences use (**bold**, `code`), as escaped HTML."""
    pieces = html.escape(text).split("`")
    joined = "".join(p if i % 2 == 0 else f"<code>{p}</code>" for i, p in enumerate(pieces))
    bold = joined.split("**")
    return Markup("".join(p if i % 2 == 0 else f"<b>{p}</b>" for i, p in enumerate(bold)))
