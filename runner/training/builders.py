"""The parts of a run, each built from the spec once: device, data, transforms, model, engines."""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from .. import data
from ..errors import RunnerError, SpecError
from . import captured
from .engine import create_evaluator, create_trainer, make_optimizer, make_scheduler, resolve_precision


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RunnerError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def load_data(spec, source: data.DataSource, device: torch.device):
    """(train images, train labels, test images, test labels, class names), tensors on the device."""
    directory = source.folder
    train_x, train_y = data.load_batches(directory, spec.data.train)
    test_x, test_y = data.load_batches(directory, spec.data.test)
    if spec.data.train_limit:
        train_x, train_y = train_x[:spec.data.train_limit], train_y[:spec.data.train_limit]
    if spec.data.test_limit:
        test_x, test_y = test_x[:spec.data.test_limit], test_y[:spec.data.test_limit]
    to = lambda t: t.to(device)
    return to(train_x), to(train_y), to(test_x), to(test_y), data.class_names(directory)


def build_transforms(spec, catalogue, train_images: torch.Tensor):
    """The train pipeline (every op, in spec order) and the eval pipeline (train-only ops left out)."""
    train_ops, eval_ops = [], []
    for name in spec.data.transforms:
        entry = catalogue.transforms[name]
        op = entry.factory(spec.transforms[name], train_images)
        train_ops.append(op)
        if not entry.train_only:
            eval_ops.append(op)
    return nn.Sequential(*train_ops), nn.Sequential(*eval_ops)


def build_model(spec, catalogue, run=None, base: nn.Module | None = None) -> nn.Module:
    """The spec's model (or `base`: another run's trained model, for a spec whose plugin names one,
    see Catalogue.model_source) with every enabled plugin's change_model applied in order."""
    if base is not None:
        model = base
    elif catalogue.model_source(spec.plugins):
        plugin, key = catalogue.model_source(spec.plugins)
        raise RunnerError(f"{spec.name} has no model of its own: plugins.{plugin}.{key} makes another spec's "
                          f"trained model its model")
    else:
        params = {k: v for k, v in spec.model.items() if k != "name"}
        model = catalogue.models[spec.model.name].factory(**params)
    hooks = run.hooks if run is not None else catalogue.hooks(spec.enabled_plugins())
    for name in spec.plugin_names():  # chained: each plugin changes the model the one before returned
        try:
            changed = hooks.one(name, "change_model")(model=model, run=run)
        except SpecError as exc:
            raise (exc.in_file(spec.origin(exc.key)) if exc.file is None else exc) from exc
        if changed and changed[0] is not None:
            model = changed[0]
    return model


def build_engines(run) -> None:
    """Optimizer, schedule, trainer and evaluator for run.model, set on the run."""
    train = run.spec.train
    captured.check_settings(train, run.world, run.spec.origin("train.step"))
    run.optimizer = make_optimizer(run.model.parameters(), train)
    if train["step"] == "graph":
        captured.graph_safe_optimizer(run.optimizer, run.device)
    run.scheduler = make_scheduler(run.optimizer, train)
    precision = resolve_precision(train["precision"], run.device)
    # The wrappers (DistributedDataParallel, compiled) only run forward passes; run.model stays
    # the plain module, so its state_dict, checkpoints and plugins see the usual parameter names.
    forward = run.model
    if run.world > 1:
        # Averages gradients across processes during backward; starts every copy from rank 0's weights.
        forward = nn.parallel.DistributedDataParallel(run.model, device_ids=[run.device.index]
                                                      if run.device.type == "cuda" else None)
    if train["compile"]:
        forward = torch.compile(forward, mode=None if train["compile"] is True else train["compile"])
    settings = {"label_smoothing": train["label_smoothing"], "channels_last": train["channels_last"],
                "precision": precision, "clip_grad_norm": train["clip_grad_norm"]}
    if train["step"] == "graph":
        run.trainer = captured.create_graph_trainer(run.model, run.optimizer, run.scheduler, run.train_pipeline,
                                                    **settings)
    else:
        run.trainer = create_trainer(run.model, run.optimizer, run.scheduler, run.train_pipeline, forward=forward,
                                     **settings)
    run.evaluator = create_evaluator(run.model, run.eval_pipeline, num_classes=len(run.class_names),
                                     channels_last=train["channels_last"], precision=precision, forward=forward)
    for engine in (run.trainer, run.evaluator):
        # Ignite logs every exception before raising it; the command line reports it once, itself.
        engine.logger.setLevel(logging.CRITICAL)
    run.results["precision"] = precision
