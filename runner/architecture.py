"""What a model is made of: its layer table (kernel, stride, padding, output shape, parameters) and its FLOPs."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def rows(model: nn.Module, input_shape=(1, 3, 32, 32)) -> list[dict]:
    """One row per leaf module, in the order the forward pass calls them."""
    found = []

    def hook(module, inputs, output):
        found.append({
            "layer": type(module).__name__,
            "kernel": "x".join(map(str, module.kernel_size)) if hasattr(module, "kernel_size") and
            isinstance(module.kernel_size, tuple) else str(getattr(module, "kernel_size", "")),
            "stride": str(module.stride[0] if isinstance(getattr(module, "stride", None), tuple)
                          else getattr(module, "stride", "")),
            "padding": str(module.padding[0] if isinstance(getattr(module, "padding", None), tuple)
                           else getattr(module, "padding", "")),
            "output": "x".join(map(str, output.shape[1:])),
            "parameters": sum(p.numel() for p in module.parameters(recurse=False)),
        })

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return found


def markdown(model: nn.Module, input_shape=(1, 3, 32, 32)) -> str:
    table = rows(model, input_shape)
    lines = ["| # | layer | kernel | stride | padding | output (C x H x W) | parameters |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {i} | {r['layer']} | {r['kernel']} | {r['stride']} | {r['padding']} | {r['output']} | {r['parameters']:,} |"
              for i, r in enumerate(table, 1)]
    lines.append(f"| | total | | | | | {sum(r['parameters'] for r in table):,} |")
    return "\n".join(lines)


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
