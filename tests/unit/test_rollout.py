"""The rollout test: sample size, the two-proportion and McNemar verdicts, routing shares."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from pipelines import rollout
from pipelines.serving.policy import Policy, route


def test_sample_size_matches_the_textbook_formula():
    # 20% vs 25% error, alpha 0.05 two-sided, power 0.8: 1,094 per arm (Fleiss, without continuity).
    assert rollout.sample_size(0.20, 0.05, 0.05, 0.8) == 1094
    # a larger effect needs fewer rows, more power needs more
    assert rollout.sample_size(0.2, 0.10, 0.05, 0.8) < rollout.sample_size(0.2, 0.05, 0.05, 0.8)
    assert rollout.sample_size(0.2, 0.05, 0.05, 0.9) > rollout.sample_size(0.2, 0.05, 0.05, 0.8)


def test_two_proportion_test_is_symmetric_and_calibrated():
    z, p = rollout.two_proportion_test(200, 1000, 250, 1000)
    z2, p2 = rollout.two_proportion_test(250, 1000, 200, 1000)
    assert z == pytest.approx(-z2) and p == pytest.approx(p2)
    assert z > 0 and p == pytest.approx(0.0077, abs=0.001)
    assert rollout.two_proportion_test(100, 1000, 100, 1000) == (0.0, 1.0)


def _log(n_champion: int, n_challenger: int, err_a: float, err_b: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for route_name, n, err in (("champion", n_champion, err_a), ("challenger", n_challenger, err_b)):
        labels = rng.integers(0, 2, n)
        wrong = rng.random(n) < err
        for i in range(n):
            rows.append(
                {
                    "request_id": f"{route_name}-{i}",
                    "row": 0,
                    "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(seconds=i),
                    "route": route_name,
                    "rollout_id": "r1",
                    "label": labels[i],
                    "prediction": 1 - labels[i] if wrong[i] else labels[i],
                }
            )
    return pd.DataFrame(rows)


POLICY = Policy(strategy="canary", challenger_version="2", share=0.1, rollout_id="r1", sample_size=500)


def test_canary_waits_for_the_fixed_sample_then_decides():
    waiting = rollout.analyse(_log(800, 300, 0.3, 0.3), POLICY, "promote")
    assert waiting.status == "waiting" and waiting.numbers["labelled_challenger"] == 300
    worse = rollout.analyse(_log(800, 600, 0.25, 0.40), POLICY, "promote")
    assert (worse.status, worse.decision) == ("decided", "abort")
    assert worse.numbers["p_value"] < 0.05
    better = rollout.analyse(_log(800, 600, 0.40, 0.25), POLICY, "abort")
    assert better.decision == "promote"
    same = rollout.analyse(_log(800, 600, 0.30, 0.30, seed=3), POLICY, "abort")
    assert same.numbers["p_value"] > 0.05 and same.decision == "abort"  # the configured choice
    assert rollout.analyse(_log(800, 600, 0.30, 0.30, seed=3), POLICY, "promote").decision == "promote"


def test_only_this_rollouts_rows_count():
    frame = _log(800, 600, 0.25, 0.40)
    frame["rollout_id"] = "an-older-rollout"
    assert rollout.analyse(frame, POLICY, "promote").status == "waiting"


def test_shadow_uses_a_paired_test_on_the_same_rows():
    rng = np.random.default_rng(1)
    n = 600
    labels = rng.integers(0, 2, n)
    champion_pred = np.where(rng.random(n) < 0.35, 1 - labels, labels)
    shadow_pred = np.where(rng.random(n) < 0.20, 1 - labels, labels)
    ts = pd.date_range("2026-01-01", periods=n, freq="s", tz="UTC")
    base = {"request_id": [f"r{i}" for i in range(n)], "row": 0, "ts": ts, "rollout_id": "r1"}
    frame = pd.concat(
        [
            pd.DataFrame({**base, "route": "champion", "prediction": champion_pred, "label": labels}),
            pd.DataFrame({**base, "route": "shadow", "prediction": shadow_pred, "label": np.nan}),
        ]
    )
    policy = Policy(strategy="shadow", challenger_version="2", rollout_id="r1", sample_size=500)
    verdict = rollout.analyse(frame, policy, "abort")
    assert verdict.decision == "promote" and "McNemar" in verdict.numbers["test"]
    assert verdict.numbers["only_challenger_right"] > verdict.numbers["only_champion_right"]


@pytest.mark.parametrize("share", [0.05, 0.3, 0.5])
def test_sticky_routing_gives_the_configured_share(share):
    policy = Policy(strategy="canary", challenger_version="2", share=share, rollout_id="abc")
    routes = [route(policy, f"user-{i}") for i in range(20_000)]
    observed = routes.count("challenger") / len(routes)
    sd = (share * (1 - share) / len(routes)) ** 0.5
    assert abs(observed - share) < 4 * sd
    assert [route(policy, f"user-{i}") for i in range(100)] == routes[:100]  # sticky


def test_a_new_rollout_reshuffles_keys_and_random_draws_need_no_key():
    a = Policy(strategy="canary", challenger_version="2", share=0.5, rollout_id="one")
    b = Policy(strategy="canary", challenger_version="2", share=0.5, rollout_id="two")
    differ = sum(route(a, f"k{i}") != route(b, f"k{i}") for i in range(2000))
    assert 800 < differ < 1200  # independent assignments disagree half the time
    rng = random.Random(7)
    draws = [route(Policy(strategy="ab", challenger_version="2", share=0.5), None, rng) for _ in range(4000)]
    assert abs(draws.count("challenger") / 4000 - 0.5) < 4 * (0.25 / 4000) ** 0.5
    assert {route(Policy(), "k"), route(Policy(strategy="shadow", challenger_version="2"), "k")} == {
        "champion"
    }


def test_a_policy_without_a_challenger_is_refused():
    with pytest.raises(ValueError, match="needs a challenger"):
        Policy(strategy="canary", share=0.1)
    with pytest.raises(ValueError, match="unknown strategy"):
        Policy.from_json('{"strategy": "yolo"}')
