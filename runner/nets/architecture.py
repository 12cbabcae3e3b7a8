"""What a model is made of: its layer table (kernel, stride, padding, output shape, parameters) and its FLOPs."""
from __future__ import annotations

import re

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _label(module: nn.Module, name: str) -> str:
    """The class name; a named part (a residual block's shortcut) also its role, and a wrapper (a
    Residual block) its settings, which tell how it combines its parts."""
    label = type(module).__name__ if name.isdigit() or not name else f"{name}: {type(module).__name__}"
    return f"{label} ({module.extra_repr()})" if list(module.children()) and module.extra_repr() else label


def rows(model: nn.Module, input_shape=(1, 3, 32, 32)) -> list[dict]:
    """One row per module the forward pass calls, in call order: every leaf, and every wrapper that
    is more than a plain container (skip's Residual blocks), so its own parameters (a gate) count and
    its structure shows; `depth` is how many such wrappers enclose the row."""
    found: list[dict] = []
    open_rows: list[int] = []  # rows of the modules still inside their forward
    names = {m: name.rpartition(".")[2] for name, m in model.named_modules()}

    def before(module, inputs):
        open_rows.append(len(found))
        found.append({
            "layer": _label(module, names[module]),
            "depth": len(open_rows) - 1,
            "kernel": "x".join(map(str, module.kernel_size)) if hasattr(module, "kernel_size") and
            isinstance(module.kernel_size, tuple) else str(getattr(module, "kernel_size", "")),
            "stride": str(module.stride[0] if isinstance(getattr(module, "stride", None), tuple)
                          else getattr(module, "stride", "")),
            "padding": str(module.padding[0] if isinstance(getattr(module, "padding", None), tuple)
                           else getattr(module, "padding", "")),
            "parameters": sum(p.numel() for p in module.parameters(recurse=False)),
        })

    def after(module, inputs, output):
        found[open_rows.pop()]["output"] = "x".join(map(str, output.shape[1:]))

    # The root is the table itself; a plain container only calls its children in order.
    shown = [m for m in model.modules() if not list(m.children()) or
             (m is not model and type(m) not in CONTAINERS)]
    handles = [h for m in shown for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    was_training, threads = model.training, torch.get_num_threads()
    try:
        model.eval()
        # One image is too little work to share out: on a busy CPU the threads mostly wait for
        # each other (a 20-layer net's pass took 1.5 s on 2 threads, 17 ms on one).
        torch.set_num_threads(1)
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return found


def markdown(model: nn.Module, input_shape=(1, 3, 32, 32)) -> str:
    header, body = table(model, input_shape)
    # Markdown strips leading spaces, so table() draws nesting inside a wrapper with a visible mark.
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return re.sub(r"(?<=\|)  (?=\|)", " ", "\n".join(lines))  # an empty cell: "| |"


def forward_flops(model: nn.Module, device="cpu", input_shape=(3, 32, 32)) -> float:
    """FLOPs of one image's forward pass (convs and matmuls; a multiply-add is 2), counted on a batch of 8."""
    was_training = model.training
    model = model.to(device).eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(8, *input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 8


COLUMNS = ["#", "layer", "kernel", "stride", "padding", "output (C x H x W)", "parameters"]


def table(model: nn.Module, input_shape=(1, 3, 32, 32)) -> tuple[list[str], list[list[str]]]:
    """The layer table as a header and rows of text (the report typesets it); nesting inside a
    wrapper is shown by a leading mark per level, the last row is the total."""
    found = rows(model, input_shape)
    body = [[str(i), "· " * r["depth"] + r["layer"], r["kernel"], r["stride"], r["padding"], r["output"],
             f"{r['parameters']:,}"] for i, r in enumerate(found, 1)]
    body.append(["", "total", "", "", "", "", f"{sum(r['parameters'] for r in found):,}"])
    return COLUMNS, body
