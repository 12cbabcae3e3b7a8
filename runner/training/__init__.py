"""One run, top to bottom (flow.py): builders for data, model and engines, the Ignite engine,
handlers, checkpoints, the per-run state plugins see, metrics, figures, other runs as inputs
(sources.py) and a search trial's side (trial.py).
"""
