"""The spec schema: every key a spec may hold, its default, type and allowed values.

Core sections are declared here; models, batch transforms and plugins declare their own
tables with the same `Setting` type, so one validator gives every error the same shape:
file, key, what is allowed.
"""
from __future__ import annotations

import builtins
import difflib
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError


@dataclass(frozen=True)
class Setting:
    """One key of a spec table. The type is taken from the default unless given."""

    default: Any
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    type: builtins.type | tuple | None = None  # a tuple of types where a key takes several (compile: bool or a mode)
    item: builtins.type | None = None  # element type for list settings; min and max then bound each element
    length: tuple[int, int] | None = None  # fewest and most elements of a list setting
    quick: Any = None  # the value under --quick, where the default would make a smoke test slow
    # The value names specs (a name or a list) whose runs the plugin reads: "model" (their trained
    # model) or "run" (their files). The suite runs those specs first (runner/training/sources.py).
    reads: str | None = None

    @property
    def kind(self) -> builtins.type | tuple:
        return self.type or type(self.default)


def _type_name(kind: type | tuple) -> str:
    if isinstance(kind, tuple):
        return " or ".join(_type_name(k) for k in kind)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "a table"}.get(kind, kind.__name__)


def check_value(setting: Setting, value: Any, *, file, key: str) -> Any:
    """Return the value (ints widened to float where a float is expected) or raise SpecError."""
    kind = setting.kind
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kind) and not (bool not in kinds and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise SpecError(f"expected {_type_name(kind)}, got {value!r}", file=file, key=key)
    if kind is list and setting.item is not None:
        for element in value:
            if not isinstance(element, setting.item) or (isinstance(element, bool) and setting.item is not bool):
                raise SpecError(f"every element must be {_type_name(setting.item)}, got {element!r}",
                                file=file, key=key)
    if setting.choices is not None:
        values = value if kind is list else [value]
        for element in values:
            if element not in setting.choices:
                raise SpecError(f"{element!r} is not allowed", file=file, key=key, allowed=setting.choices)
    if kind is list and setting.length is not None and not setting.length[0] <= len(value) <= setting.length[1]:
        raise SpecError(f"expected {setting.length[0]} to {setting.length[1]} elements, got {len(value)}",
                        file=file, key=key)
    for element in value if kind is list else [value]:
        if setting.min is not None and element < setting.min:
            raise SpecError(f"{element!r} is below the minimum {setting.min}", file=file, key=key)
        if setting.max is not None and element > setting.max:
            raise SpecError(f"{element!r} is above the maximum {setting.max}", file=file, key=key)
    return value


def unknown_key(key: str, allowed, *, file, prefix: str = "") -> SpecError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"unknown key; did you mean {prefix + close[0]!r}?" if close else "unknown key"
    return SpecError(hint, file=file, key=prefix + key, allowed=sorted(allowed))


def suggestion(name, known) -> str:
    """'; did you mean 'normalize'?' for a name close to a known one (normalise), else ''."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def validate_table(table: Any, schema: dict[str, Setting], *, file, prefix: str) -> dict:
    """Check a table against its schema and fill in defaults; prefix is 'train.' and the like."""
    if not isinstance(table, dict):
        raise SpecError(f"expected a table, got {table!r}", file=file, key=prefix.rstrip("."))
    for key in table:
        if key not in schema:
            raise unknown_key(key, schema, file=file, prefix=prefix)
    return {key: check_value(s, table[key], file=file, key=prefix + key) if key in table else s.default
            for key, s in schema.items()}


# ---- the core sections -------------------------------------------------------------------

TOP = {
    "name": Setting("", "run name; default the spec file's stem"),
    "question": Setting("", "the homework question in one line, for the report"),
    "title": Setting("", "a short name in words for the report's captions and tables (default: the spec's name)"),
    "seed": Setting(0, "random seed", min=0),
    "device": Setting("auto", "where to run", choices=("auto", "cpu", "cuda")),
    "requires": Setting([], "specs (paths relative to this file) whose trained models this one uses", item=str),
}

DATA = {
    "root": Setting("", "CIFAR-10 location: folder or archive; --data and RUNNER_DATA take precedence"),
    "train": Setting(["data_batch_1"], "training batches", item=str,
                     choices=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)),
    "test": Setting(["test_batch"], "evaluation batches", item=str,
                    choices=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)),
    "transforms": Setting([], "batch transforms in the order they apply (train-only ones skip evaluation)",
                          item=str),
    "train_limit": Setting(0, "use only the first N training images (0: all)", min=0),
    "test_limit": Setting(0, "use only the first N test images (0: all)", min=0),
}

COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

TRAIN = {
    "iterations": Setting(2000, "optimizer steps (0: evaluate only, e.g. a trained model a plugin loads)", min=0),
    "batch_size": Setting(100, "images per step; an epoch is a fresh permutation", min=1),
    "optimizer": Setting("sgd", "optimizer", choices=("sgd", "adam", "adamw")),
    "lr": Setting(0.01, "peak learning rate", min=0.0),
    "momentum": Setting(0.9, "SGD momentum (Adam's beta1)", min=0.0, max=1.0),
    "nesterov": Setting(False, "Nesterov momentum (SGD)"),
    "weight_decay": Setting(0.0, "L2 weight decay", min=0.0),
    "schedule": Setting("constant", "learning-rate shape after warmup", choices=("constant", "linear", "cosine")),
    "warmup": Setting(0.0, "fraction of iterations with a linear warmup from 0", min=0.0, max=1.0),
    "label_smoothing": Setting(0.0, "cross-entropy label smoothing", min=0.0, max=1.0),
    "clip_grad_norm": Setting(0.0, "scale the gradients down to this total L2 norm when above it, after "
                              "plugins read them (0: off)", min=0.0),
    "channels_last": Setting(True, "channels_last memory format (much faster on CPU)"),
    "precision": Setting("auto", "arithmetic of forward passes: bf16 autocast or plain fp32 (auto: bf16 on "
                         "CUDA, fp32 on CPU)", choices=("auto", "fp32", "bf16")),
    "compile": Setting(False, "torch.compile the model: true (torch's default mode) or a mode; \"reduce-overhead\" "
                       "also replays each step as a CUDA graph on a GPU, for steps bound by kernel launches "
                       "(compiling costs tens of seconds)",
                       choices=COMPILE_MODES, type=(bool, str)),
    "step": Setting("eager", "how each training step runs: \"eager\" (op by op from Python) or \"graph\" (on "
                    "static tensors, captured once as CUDA graphs and replayed on a GPU: for steps bound by kernel "
                    "launches; on the CPU the same code runs uncaptured)", choices=("eager", "graph")),
    "log_every": Setting(10, "iterations between progress/log updates", min=1),
    "checkpoint_epochs": Setting(1, "save a resumable checkpoint every N epochs (0: never)", min=0),
}

EVAL = {
    "batch_size": Setting(1000, "images per evaluation batch", min=1),
}

# [search]: a hyperparameter study over the spec (`runner SPEC --search`, runner/suite/search.py). Only
# a spec that has the table gets it (so every other spec resolves as before), and a run without
# --search ignores it. Its dotted keys ("train.lr" = { log = [1e-4, 1e-1] }) are the spaces, checked
# against the resolved spec in spec.py; these are its settings.
SEARCH = {
    "metric": Setting("validation_accuracy", "the summary.json key the study optimizes (validation_accuracy: "
                      "the held-out images' accuracy at the end of a trial)"),
    "direction": Setting("maximize", "whether a higher or lower metric is better", choices=("maximize", "minimize")),
    "trials": Setting(20, "trials the study runs to (finished ones: complete, pruned or failed)", min=1),
    "sampler": Setting("tpe", "how trials' values are chosen (grid: every space a choice or int)",
                       choices=("tpe", "random", "grid")),
    "pruner": Setting("median", "what stops unpromising trials early (on the validation accuracy)",
                      choices=("median", "halving", "none")),
    "warmup": Setting(0, "iterations before a trial may be pruned", min=0),
    "validation": Setting(1000, "images held out of the training batches for validation (the last ones); a "
                          "trial trains on the rest", min=1),
    "every": Setting(100, "iterations between validations (each reported to the trial, which may be pruned)",
                     min=1),
    "seed": Setting(0, "the sampler's seed: a study with the same seed proposes the same values", min=0),
}
SPACE_KINDS = ("log", "range", "int", "choice")

# Tables whose keys are declared elsewhere: [model] by the chosen model, [transforms.<op>] by
# each op, [plugins.<name>] by each plugin; [search] (above) has settings and spaces.
SECTIONS = {"data": DATA, "train": TRAIN, "eval": EVAL}
OPEN_SECTIONS = ("model", "transforms", "plugins", "search")
RESERVED = ("extends",)


def plugin_files(table: dict) -> list[tuple[str, dict]]:
    """(name, settings) of each plugin table that loads its plugin from a file (`path = "..."`).

    Tolerates any shape: a `plugins` that is not a table of tables is validate()'s to report."""
    plugins = table.get("plugins")
    return [(name, settings) for name, settings in (plugins.items() if isinstance(plugins, dict) else ())
            if isinstance(settings, dict) and isinstance(settings.get("path"), str) and settings["path"]]
