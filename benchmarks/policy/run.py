"""Retraining policies side by side: the policy backtest on flights and on a second dataset.

    .venv/bin/python benchmarks/policy/run.py            # both datasets, README updated (about 4 min)
    .venv/bin/python benchmarks/policy/run.py --quick    # flights Apr-Jun only, README untouched

Each dataset's months are served under every policy (never, monthly, quarterly, the old
drift-or-decay rule, each new trigger alone, the configured policy) with the project's own
training, gate, rollout and monitoring code (``pipelines.backtest``, in process), next to an
oracle. The tables go into benchmarks/README.md between the ``policy`` markers, and the HTML
reports (plots) into ``.mlops/artifacts/backtest/<dataset>/``.

Targets (issue 18): the configured policy's mean live ROC AUC at least the monthly cron's with at
most half its retrains, and above never retraining; each trigger's precision and recall against
realised harm, with the trade-off curve in the HTML report; the CBPE estimate's error per month.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipelines import backtest, reports, storage  # noqa: E402
from pipelines.config import load_config  # noqa: E402

README = ROOT / "benchmarks" / "README.md"
DATASETS = {  # config, first and last month served, training windows compared
    "flights": ("flights.yaml", "2013-04", "2013-12", [3, 6, 12]),
    "car_loan": ("car_loan.yaml", "2019-02", "2019-08", [3, 6, None]),
}


def verdict(result: dict) -> str:
    by = {p["policy"]: p for p in result["policies"]}
    conf, cron, never = by["configured"], by["monthly"], by["never"]
    ok = (
        conf["mean_live_auc"] >= cron["mean_live_auc"] - 0.0005
        and conf["retrains"] <= cron["retrains"] / 2
        and conf["mean_live_auc"] > never["mean_live_auc"]
    )
    return (
        f"configured {conf['mean_live_auc']:.3f} with {conf['retrains']} retrains vs monthly cron"
        f" {cron['mean_live_auc']:.3f} with {cron['retrains']}, never {never['mean_live_auc']:.3f}:"
        f" target {'met' if ok else 'NOT met'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="flights Apr-Jun only; README untouched")
    args = parser.parse_args()
    sections = []
    for name, (file, first, last, windows) in DATASETS.items():
        if args.quick and name != "flights":
            continue
        if args.quick:
            last, windows = "2013-06", [3]
        config = load_config(ROOT / "pipelines" / "datasets" / file)
        started = time.perf_counter()
        result = backtest.run(
            config, first=first, last=last, windows=windows,
            progress=lambda m, n=name: print(f"[{n}] {m}", flush=True),
        )  # fmt: skip
        out = storage.join(str(ROOT / ".mlops" / "artifacts"), "backtest", config.dataset.name)
        storage.write_json(storage.join(out, "backtest.json"), result)
        html = storage.write_text(storage.join(out, "backtest.html"), reports.backtest_html(result))
        text = backtest.table_text(result)
        print(text, f"\n{verdict(result)}\nreport: {html}\n", sep="\n", flush=True)
        sections.append(
            f"### {name} ({first} .. {last}), {time.perf_counter() - started:.0f} s\n\n"
            f"```\n{text}\n```\n\n{verdict(result)}\n"
        )
    if not args.quick:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        body = f"Measured {stamp} by `make bench-policy`.\n\n" + "\n".join(sections)
        text = README.read_text()
        block = f"<!-- policy:begin -->\n{body}<!-- policy:end -->"
        if "<!-- policy:begin -->" in text:
            text = re.sub(r"<!-- policy:begin -->.*?<!-- policy:end -->", lambda _: block, text, flags=re.S)
        else:
            text += "\n" + block + "\n"
        README.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
