"""Other specs' runs as a run's input: their trained models and their files.

A plugin says which of its settings name specs it reads: `Setting("p1_q4_crop", ..., reads="model")`
(or reads="run" for a run's files). The suite derives a spec's requirements from them, so what a
spec needs and what its plugins read cannot disagree. A plugin module that sets
`RUN_MODEL = "<setting>"` makes that spec's trained model the run's own model: such a spec names no
[model] and trains nothing (an attack on another run's net).

Which run: the latest completed run of the named spec in the same --out and mode (--quick or
not), of this run's seed where there is one, else of any seed.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import artifacts
from ..errors import RunnerError

# ---- finding runs --------------------------------------------------------------------------------

def latest_run(run, spec_name: str) -> Path | None:
    """The run of `spec_name` that `run` reads (see the module's docstring), or None."""
    return artifacts.source_run(run.dir.parent.parent, spec_name, run.quick, run.spec.seed)


def require_run(run, spec_name: str, role: str) -> Path:
    """latest_run, or an error that says which command makes it."""
    return _required(run.spec, run.dir.parent.parent, run.quick, spec_name, role)


def _required(spec, out, quick: bool, spec_name: str, role: str) -> Path:
    found = artifacts.source_run(out, spec_name, quick, spec.seed)
    if found is None:
        flag = " --quick" if quick else ""
        raise RunnerError(
            f"{spec.name} needs {role}: a completed{' quick' if quick else ''} run of spec "
            f"{spec_name!r} under {out}, and there is none. Run `runner specs/{spec_name}.toml{flag} "
            f"--out {out}` (with the same --data) first, or rerun {spec.name} with --with-deps.")
    return found


def completed_runs(run, names: list[str], skipped: list[str], label: str = ""):
    """(name, run folder) for each named spec that has a run to read; each that has none is added
    to `skipped` with the command that makes it."""
    for name in names:
        found = latest_run(run, name)
        if found is None:
            skipped.append(f"{label}{name}: no completed run (runner specs/{name}.toml)")
        else:
            yield name, found


# ---- trained models -----------------------------------------------------------------------------

def load_trained(run_dir, catalogue=None, device="cpu") -> tuple[nn.Module, object]:
    """A finished run's model with its evaluation transforms in front: it takes pixel values 0-255.
    Returns (model in eval mode, the run's spec)."""
    from ..plugin_host.catalogue import Catalogue
    from ..spec.loading import load
    from .builders import build_model, build_transforms

    run_dir = Path(run_dir)
    catalogue = catalogue or Catalogue.default()
    spec = load(run_dir / "spec.toml", catalogue)
    if catalogue.model_source(spec.plugins):  # an attack's run: its model was another run's
        raise RunnerError(f"{run_dir} has no model of its own ({spec.name} read another run's); load the run "
                          f"named in its summary.json (model_source.run) instead")
    state = torch.load(run_dir / "model.pt", map_location=device, weights_only=True)
    model = build_model(spec, catalogue)
    model.load_state_dict(state["model"])
    # Transforms are rebuilt from placeholder statistics, then their saved buffers restore the real ones.
    placeholder = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    placeholder[1] = 255
    _, pipeline = build_transforms(spec, catalogue, placeholder)
    pipeline.load_state_dict(state["eval_pipeline"])
    # In the memory format it trained in: on a CPU channels_last runs convolutions faster.
    memory_format = torch.channels_last if spec.train.channels_last else torch.contiguous_format
    # Module.to takes memory_format (torch's docs), though its typed overloads leave it out.
    net = nn.Sequential(pipeline, model).to(device, memory_format=memory_format)  # type: ignore[call-overload]
    return net.eval(), spec


def trained_model(run, run_dir) -> nn.Module:
    """The trained model of a run folder on `run`'s device, in eval mode; it takes pixel values 0-255."""
    model, _ = load_trained(run_dir, run.catalogue, run.device)
    return model


def probabilities(model, images, batch_size: int = 1000) -> torch.Tensor:
    """Softmax output (N, classes) of a model for uint8 or float images, in batches."""
    out = [torch.zeros(0, 10, device=images.device)]
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            out.append(model(images[start:start + batch_size].float()).float().softmax(1))
    return torch.cat(out)


def require_runs(spec, out, quick: bool) -> None:
    """Fail before a run starts unless every spec a single-spec `reads` setting names has a run to
    read, naming the command that makes it (a list may have gaps: its plugin lists them)."""
    for name, setting in spec.reads.items():
        if isinstance(spec.get(setting), str):
            _required(spec, Path(out), quick, name, f"the run {setting} names")


def source_model(run) -> nn.Module | None:
    """The trained model that is this run's own (an attack's source), or None when the spec builds
    its own; the results say which run it came from (model_source)."""
    source = run.catalogue.model_source(run.spec.plugins)
    if source is None:
        return None
    plugin, key = source
    name = run.spec.plugins[plugin][key]
    run_dir = require_run(run, name, f"the trained model plugins.{plugin}.{key} names")
    run.results["model_source"] = {"spec": name, "run": str(run_dir)}
    return trained_model(run, run_dir)
