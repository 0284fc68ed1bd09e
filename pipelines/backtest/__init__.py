"""Policy backtest: replay a dataset's months under retraining policies, in process, side by side.

Each policy serves the months ``first..last`` one after the other. At the end of
a month its trigger looks at the month (the project's own ``monitoring.detect``
and ``retrain_decision``, or a fixed schedule); a retrain fits the configured
strategy on the window ending there (``modeling``), the gate decides against
the champion on the candidate's test split (``gate.decide``), and the rollout
serves it: ``direct`` from the next month, ``canary``/``ab`` to a share of the
next month and then by the online test of ``pipelines.rollout`` at the month's
end, ``shadow`` to nobody until that test. Fits are cached, so ten policies
cost a few dozen fits, not hundreds.

What is reported, per policy: live ROC AUC and log loss per month (what the
users got), retrains, training compute, months served by a model worse than the
best available (the oracle: for each month the best of every model any policy
could have had, i.e. every strategy's fit on every earlier month boundary), and
alarms judged against realised harm: an alarm at the end of month ``i``
predicted harm when the serving model's AUC on month ``i+1`` is more than
``margin`` below a fresh retrain's on that month.

A trigger's trade-off curve (precision and recall over its threshold) comes
from a panel: every stateless fit of the strategy serving every later month.
Nothing here needs Airflow, MLflow or a server.
"""

from pipelines import modeling  # noqa: F401  (reached as ``backtest.modeling`` by the tests)
from pipelines.backtest.experiment import configured_strategy, run, strategy_grid
from pipelines.backtest.policies import Policy, PolicyRun, standard_policies
from pipelines.backtest.replay import Model, Period, Replay, Strategy, month_starts
from pipelines.backtest.report import table_text
from pipelines.backtest.simulation import HARM_MARGIN, oracle, simulate
from pipelines.backtest.tradeoffs import SCORES, panel, tradeoff

__all__ = [
    "HARM_MARGIN",
    "SCORES",
    "Model",
    "Period",
    "Policy",
    "PolicyRun",
    "Replay",
    "Strategy",
    "configured_strategy",
    "month_starts",
    "oracle",
    "panel",
    "run",
    "simulate",
    "standard_policies",
    "strategy_grid",
    "table_text",
    "tradeoff",
]
