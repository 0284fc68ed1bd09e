"""The online model server: champion and challenger by alias, rollouts, prediction log, metrics.

Run it with ``mlops serve`` (uvicorn); see :mod:`pipelines.serving.app`.
"""
