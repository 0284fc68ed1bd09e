"""The demo and the local stack: ``make demo`` (the closed loop), ``make up``/``down``, ``make train-demo``.

Development tooling, kept out of the Airflow integration (``mlops_airflow``) and out of the
installed package: Airflow never imports it, and the production Airflow image does not ship it.
It runs from a checkout, where the Makefile puts the repository root on ``PYTHONPATH``.
"""
