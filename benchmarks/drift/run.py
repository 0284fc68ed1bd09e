"""Drift detection: this project's statistics vs Evidently's DataDriftPreset, side by side.

    .venv/bin/python benchmarks/drift/run.py            # 1M x 20 synthetic + the flights data
    .venv/bin/python benchmarks/drift/run.py --rows 100000

Both sides judge every column with the same method and threshold (Evidently's
large-sample defaults, which are also this project's: normalised Wasserstein
0.1 for numbers, Jensen-Shannon 0.1 for categories). Each measurement runs in
its own fresh process; peak memory is that process's peak RSS (VmHWM, reset
once the data are loaded) minus its RSS at that moment. The results go into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
N_NUMERIC, N_CATEGORICAL = 15, 5


def synthetic(rows: int) -> tuple[Any, Any, list[str], list[str]]:
    """Reference and current frames; columns n0-n4 and c0 are shifted in current, the rest not."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    numeric = [f"n{i}" for i in range(N_NUMERIC)]
    categorical = [f"c{i}" for i in range(N_CATEGORICAL)]

    def frame(shift: bool) -> pd.DataFrame:
        data = {}
        for i, c in enumerate(numeric):
            values = rng.normal(10 + i, 1 + i / 5, size=rows)
            if shift and i < 5:
                values += 0.5 * (1 + i / 5)  # half a standard deviation
            values[rng.random(rows) < 0.02] = np.nan
            data[c] = values
        for i, c in enumerate(categorical):
            p = np.array([0.4, 0.3, 0.2, 0.1]) if not (shift and i == 0) else np.array([0.1, 0.2, 0.3, 0.4])
            data[c] = rng.choice([f"k{j}" for j in range(4)], size=rows, p=p)
        return pd.DataFrame(data)

    return frame(False), frame(True), numeric, categorical


def flights() -> tuple[Any, Any, list[str], list[str]]:
    """Jan-Mar 2013 against July 2013, the bundled data."""
    import pandas as pd

    from pipelines import sources
    from pipelines.config import load_config
    from pipelines.settings import DEFAULT_CONFIG

    config = load_config(DEFAULT_CONFIG)
    features, tz = config.dataset.features, config.schedule.timezone

    def window(start: str, end: str) -> pd.DataFrame:
        frame = sources.read_window(config.dataset, pd.Timestamp(start, tz=tz), pd.Timestamp(end, tz=tz))
        return frame[features.all].reset_index(drop=True)

    return (
        window("2013-01-01", "2013-04-01"),
        window("2013-07-01", "2013-08-01"),
        features.numeric,
        features.categorical,
    )


def _ours(ref, cur, numeric, categorical) -> tuple[dict[str, tuple[bool, float]], float, float]:
    from pipelines import drift

    rules = {c: drift.ColumnRule("numeric", "wasserstein", 0.1) for c in numeric}
    rules |= {c: drift.ColumnRule("categorical", "jensenshannon", 0.1) for c in categorical}
    started = time.perf_counter()
    reference = drift.Reference.from_frame(ref, {c: r.kind for c, r in rules.items()})
    prepared = time.perf_counter()
    results = drift.compare(reference, cur, rules, min_rows=1)
    done = time.perf_counter()
    return (
        {r["column"]: (bool(r["drifted"]), float(r["score"])) for r in results},
        prepared - started,
        done - prepared,
    )


def _evidently(ref, cur, numeric, categorical) -> tuple[dict[str, tuple[bool, float]], float, float]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(cur, data_definition=definition),
        reference_data=Dataset.from_pandas(ref, data_definition=definition),
    )
    verdicts = {}
    for metric in snapshot.dict()["metrics"]:
        cfg = metric["config"]
        if cfg["type"].endswith("ValueDrift"):
            verdicts[cfg["column"]] = (metric["value"] >= cfg["threshold"], float(metric["value"]))
    return verdicts, 0.0, time.perf_counter() - started


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field)) / 1024


def _reset_peak() -> None:
    """Linux: make the peak RSS (VmHWM) start again from the current RSS, after the data loaded."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _worker(side: str, dataset: str, rows: int, out) -> None:
    ref, cur, numeric, categorical = synthetic(rows) if dataset == "synthetic" else flights()
    if side == "evidently":
        import evidently.presets  # noqa: F401 - import cost is not part of the measurement
    else:
        import pipelines.drift  # noqa: F401
    baseline = _status_mib("VmRSS")
    _reset_peak()
    verdicts, prepare, compare = (_ours if side == "ours" else _evidently)(ref, cur, numeric, categorical)
    peak = _status_mib("VmHWM")
    out.put({"verdicts": verdicts, "prepare": prepare, "compare": compare, "peak_mib": peak - baseline,
             "shape": (len(ref), len(cur), len(numeric) + len(categorical))})  # fmt: skip


def measure(side: str, dataset: str, rows: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(side, dataset, rows, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per side of the synthetic data")
    args = parser.parse_args()
    t0 = time.time()
    lines = []
    for dataset in ("synthetic", "flights"):
        runs = {}
        for side in ("ours", "evidently"):
            print(f"[{time.time() - t0:6.1f}s] {dataset}: {side} ...", flush=True)
            runs[side] = measure(side, dataset, args.rows)
        ours, theirs = runs["ours"], runs["evidently"]
        total_ours = ours["prepare"] + ours["compare"]
        disagree = [c for c in theirs["verdicts"] if theirs["verdicts"][c][0] != ours["verdicts"][c][0]]
        diff = max(abs(theirs["verdicts"][c][1] - ours["verdicts"][c][1]) for c in theirs["verdicts"])
        drifted = sorted(c for c, (d, _) in ours["verdicts"].items() if d)
        ref_rows, cur_rows, cols = ours["shape"]
        lines.append(
            f"| {dataset} | {ref_rows:,} + {cur_rows:,} x {cols} | {total_ours:.2f} s"
            f" ({ours['compare']:.2f} s with the reference prepared) | {theirs['compare']:.2f} s"
            f" | **{theirs['compare'] / total_ours:.1f}x** ({theirs['compare'] / ours['compare']:.1f}x)"
            f" | {ours['peak_mib']:.0f} / {theirs['peak_mib']:.0f} MiB"
            f" | {len(theirs['verdicts']) - len(disagree)}/{len(theirs['verdicts'])} same"
            f" (drifted: {', '.join(drifted) or 'none'}); max score difference {diff:.1e} |"
        )
        print(lines[-1], flush=True)
        if disagree:
            print(f"verdicts differ on {disagree}", flush=True)
    section = "\n".join(
        [
            "Command: `make bench-drift` (`benchmarks/drift/run.py`), 2 cores. Same method and threshold per",
            "column on both sides (normalised Wasserstein 0.1, Jensen-Shannon 0.1); each side in a fresh",
            "process; memory is the peak RSS (VmHWM, reset after loading) above the RSS once the data",
            "were loaded.",
            "",
            "| data | rows (reference + current) x columns | this project | Evidently 0.7.23"
            " | Evidently / ours (compare only) | peak memory ours / Evidently | verdicts |",
            "|---|---|---|---|---|---|---|",
            *lines,
        ]
    )
    readme = ROOT / "benchmarks" / "README.md"
    text = readme.read_text()
    block = f"<!-- drift:start -->\n{section}\n<!-- drift:end -->"
    if "<!-- drift:start -->" in text:
        text = re.sub(r"<!-- drift:start -->.*?<!-- drift:end -->", lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Drift detection vs Evidently\n\n" + block + "\n"
    readme.write_text(text)
    print(f"[{time.time() - t0:6.1f}s] written to {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
