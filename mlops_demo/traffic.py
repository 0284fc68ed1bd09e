"""A month of the dataset's history as the model server's traffic, and its outcomes as feedback.

Each request is the rows that share one time value and the config's ``dataset.request_group``
columns (flights: one origin's departures in one scheduled hour, as a booking system scoring them
would send them), carrying that time as ``event_time``; answers are retried on 503 so that a model
swap or a restart loses no traffic.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mlops_demo.console import say


def month_rows(config, month: str):
    """The month's rows (in the schedule's timezone), their features and their true outcome."""
    import pandas as pd

    from pipelines import modeling, sources

    tz = config.schedule.timezone
    start = pd.Timestamp(f"{month}-01", tz=tz)
    end = start + pd.DateOffset(months=1)
    dataset = config.dataset
    raw = sources.read_window(dataset, start.tz_convert("UTC"), end.tz_convert("UTC"))
    raw = raw[raw[dataset.target.required].notna().all(axis=1)].reset_index(drop=True)
    x = modeling.model_input(raw, dataset)
    label = raw.eval(dataset.target.expression).astype(int).to_numpy()
    return raw, x, label


def requests_of(raw, x, config) -> list[dict[str, Any]]:
    """One request per time value and ``dataset.request_group`` values, keyed by them for routing."""
    import numpy as np

    dataset = config.dataset
    records = x.astype(object).where(x.notna(), None).to_dict("records")
    out = []
    groups = raw.groupby([*dataset.request_group, dataset.time_column], sort=True).indices
    for values, index in groups.items():
        *group, when = values if isinstance(values, tuple) else (values,)
        index = np.sort(index)
        out.append(
            {
                "index": index,
                "body": {
                    "records": [records[i] for i in index],
                    "routing_key": ":".join(str(v) for v in [*group, when]),
                    "event_time": when.isoformat(),
                },
            }
        )
    return out


async def _send(url: str, requests: list[dict[str, Any]], concurrency: int) -> tuple[list[dict], int]:
    import httpx

    answers: list[dict[str, Any] | None] = [None] * len(requests)
    retried = [0]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            for attempt in range(20):  # a swap or a restart must not lose traffic: retry on 503
                response = await client.post(f"{url}/predict", json=requests[i]["body"])
                if response.status_code == 200:
                    answers[i] = response.json()
                    break
                if response.status_code != 503:
                    raise RuntimeError(f"/predict answered {response.status_code}: {response.text[:300]}")
                retried[0] += 1
                await asyncio.sleep(0.5 * (attempt + 1))
            else:
                raise RuntimeError("/predict kept answering 503")

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return answers, retried[0]  # type: ignore[return-value]


def replay(url: str, raw, x, label, config, concurrency: int = 8):
    """Send the month as traffic; return one row per flight: what was answered, by whom, the truth."""
    import numpy as np
    import pandas as pd

    requests = requests_of(raw, x, config)
    started = time.time()
    answers, retried = asyncio.run(_send(url, requests, concurrency))
    rows = []
    for request, answer in zip(requests, answers, strict=True):
        for r, (i, p) in enumerate(zip(request["index"], answer["predictions"], strict=True)):
            rows.append(
                (answer["request_id"], r, int(i), p["probability"], answer["model_version"], answer["route"])
            )
    frame = pd.DataFrame(
        rows, columns=["request_id", "row", "index", "probability", "model_version", "route"]
    )
    frame["label"] = np.asarray(label)[frame["index"].to_numpy()]
    frame.attrs["retried_503"] = retried
    seconds = time.time() - started
    say(
        f"  sent {len(frame)} rows in {len(requests)} requests in {seconds:.1f}s"
        f" ({len(requests) / max(seconds, 1e-9):.0f} req/s)"
    )
    return frame


def post_feedback(url: str, frame) -> int:
    """The true outcomes, as the airline learns them, in chunks."""
    import httpx

    items = frame[["request_id", "row", "label"]].astype({"row": int, "label": int}).to_dict("records")
    with httpx.Client(timeout=120) as client:
        for lo in range(0, len(items), 20_000):
            response = client.post(f"{url}/feedback", json={"feedback": items[lo : lo + 20_000]})
            response.raise_for_status()
    return len(items)


def score_auc(label, proba) -> float | None:
    """ROC AUC of ``proba`` against ``label``; None when the labels hold one class only."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    label = np.asarray(label)
    return float(roc_auc_score(label, proba)) if len(np.unique(label)) == 2 else None
