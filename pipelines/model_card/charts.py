"""The geometry of the card page's slice charts; ``model_card_chart.html.j2`` draws them as inline SVG."""

from __future__ import annotations

from typing import Any

from pipelines.model_card.text import label

CHART_LIMIT = 40  # slices drawn in a chart; the table beside it lists all
LABEL_WIDTH, BAR_WIDTH, ROW_HEIGHT, TOP = 130, 420, 18, 22  # pixels


def slice_chart(
    column: str, rows: list[dict[str, Any]], metric: str, fairness: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Horizontal bars of the candidate's score per slice, best first; unscored slices in grey.

    The bars' axis runs from the lowest score (at most 0.5) to 1; a dashed line marks the best
    slice's score minus the slice check's allowed gap. None when there is no slice to draw.
    """
    ordered = sorted(
        rows, key=lambda r: (r[metric].get("candidate") is None, -(r[metric].get("candidate") or 0))
    )
    shown = ordered[:CHART_LIMIT]
    if not shown:
        return None
    scores = [r[metric]["candidate"] for r in shown if r[metric].get("candidate") is not None]
    low = min([0.5, *scores])
    height = TOP + ROW_HEIGHT * len(shown) + 10

    def x(value: float) -> float:
        return LABEL_WIDTH + (value - low) / (1 - low) * BAR_WIDTH

    gap = (fairness["columns"].get(column) or {}) if fairness else {}
    floor = None
    if fairness and gap.get("best") and fairness.get("max_gap") is not None:
        allowed = gap["best"]["score"] - fairness["max_gap"]
        floor = x(allowed) if allowed > low else None
    bars = []
    for i, r in enumerate(shown):
        score = r[metric].get("candidate")
        bar = {"y": TOP + i * ROW_HEIGHT, "value": r["value"], "rows": r["rows"], "score": score}
        if score is not None:
            bar["width"] = max(x(score) - LABEL_WIDTH, 1)
            bar["end"] = x(score)
            bar["colour"] = "#0969da" if r["scored"] else "#8c959f"
        bars.append(bar)
    return {
        "column": column,
        "metric": label(metric),
        "width": LABEL_WIDTH + BAR_WIDTH + 70,
        "height": height,
        "left": LABEL_WIDTH,
        "top": TOP,
        "row_height": ROW_HEIGHT,
        "low": low,
        "floor": floor,
        "bars": bars,
        "limit": CHART_LIMIT,
        "total": len(rows),
    }
