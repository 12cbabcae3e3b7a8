"""Many runs: planning a suite (plan.py: dependency order, up-to-date checks), the executors that
run its jobs (in process, worker processes, Dask, torchrun data-parallel), Optuna searches,
and the listings `runner ls/show/compare` print.
"""
