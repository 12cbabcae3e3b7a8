"""Part 2 fix without removing a conv or adding BatchNorm: residual (skip) connections.

Wraps runs of shape-preserving conv layers of a top-level nn.Sequential into residual blocks.
A unit is one shape-preserving conv (stride 1, in == out channels, odd kernel with padding
kernel // 2, dilation 1, groups 1), optionally followed by BatchNorm2d and/or ReLU. A run is a
maximal sequence of consecutive units with the same channels and kernel size (so the
homework's 5x5 inserted convs stay apart from a 3x3 conv2 that follows them). Each run is cut
into blocks of `block` units (a shorter block at the end keeps the leftover), and each block
becomes

    y = shortcut(x) + gate * branch(x)        (then ReLU if final_relu)

where `branch` is an nn.Sequential of the block's original layer objects, unchanged: conv,
ReLU, conv, ReLU, so the branch ends in its own ReLU (the simplest faithful choice: no layer
is moved or dropped). With final_relu = true the branch's trailing ReLU moves after the
addition instead, y = relu(x + conv(relu(conv(x)))), ResNet's block: the same layers, and a
branch whose last conv starts at zero (Fixup) still gets gradients, which a ReLU at its end
would block (PyTorch's ReLU passes no gradient at 0). shortcut is the identity, or a 1x1 conv
initialized to the identity (`projection`); gate is 1, or a learnable scalar starting at 0
(`zero`, as in ReZero and SkipInit), so a block starts as the identity. Parameters are the
same objects as before; identity shortcuts add none, `gate = "zero"` adds one per block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from runner import Plugin, SpecError, hookimpl, setting
from runner.blocks import Residual


@dataclass(frozen=True)
class Settings:
    layers: str = setting("inserted", "which convs: the run right after the first conv (the homework's inserted "
                          "layers), or every run of shape-preserving convs", choices=("inserted", "all"))
    block: int = setting(2, "conv layers per residual block", min=1)
    shortcut: str = setting("identity", "shortcut path: identity, or a 1x1 conv initialized to the identity",
                            choices=("identity", "projection"))
    gate: str = setting("none", "scale of the residual branch: none (1), or a learnable scalar starting at 0",
                        choices=("none", "zero"))
    final_relu: bool = setting(False, "move each branch's trailing ReLU after the addition (ResNet's block; "
                               "needed by init's fixup, whose zeroed last conv a trailing ReLU would never let train)")


plugin = Plugin(settings=Settings, help="residual blocks around runs of shape-preserving convs (P2 Q4's fix)")


def identity_conv(channels: int) -> nn.Conv2d:
    """A 1x1 conv that starts as the identity map (learnable afterwards)."""
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).reshape(channels, channels, 1, 1))
    return conv


def shape_preserving(module: nn.Module) -> bool:
    if type(module) is not nn.Conv2d:
        return False
    k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
    return (module.in_channels == module.out_channels and module.groups == 1 and s == (1, 1)
            and d == (1, 1) and k[0] % 2 == 1 and k[1] % 2 == 1
            and p in ("same", (k[0] // 2, k[1] // 2)) and module.padding_mode == "zeros")


def _unit_at(layers: list[nn.Module], i: int) -> int:
    """Length of the unit (conv[, BatchNorm2d][, ReLU]) starting at layers[i], 0 if none does."""
    if not shape_preserving(layers[i]):
        return 0
    n, channels = 1, layers[i].out_channels
    if i + n < len(layers) and isinstance(layers[i + n], nn.BatchNorm2d) and layers[i + n].num_features == channels:
        n += 1
    if i + n < len(layers) and isinstance(layers[i + n], nn.ReLU):
        n += 1
    return n


def find_runs(layers: list[nn.Module]) -> list[tuple[int, list[list[nn.Module]]]]:
    """Every run as (start index, its units), in order."""
    runs, i = [], 0
    while i < len(layers):
        n = _unit_at(layers, i)
        if not n:
            i += 1
            continue
        start, units, key = i, [], (layers[i].out_channels, layers[i].kernel_size)
        while n and (layers[i].out_channels, layers[i].kernel_size) == key:
            units.append(layers[i:i + n])
            i += n
            n = _unit_at(layers, i) if i < len(layers) else 0
        runs.append((start, units))
    return runs


def _inserted(layers: list[nn.Module], runs) -> list:
    """The run that follows the first conv with no other conv in between."""
    first = next((i for i, m in enumerate(layers) if isinstance(m, nn.modules.conv._ConvNd)), None)
    if first is None:
        return []
    after = [run for run in runs if run[0] > first]
    if not after:
        return []
    start = after[0][0]
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in layers[first + 1:start]):
        return []
    return [after[0]]


def wrap(model: nn.Module, settings: dict) -> nn.Sequential:
    if not isinstance(model, nn.Sequential):
        raise SpecError(f"the skip plugin needs a model that is an nn.Sequential of layers; this model is "
                        f"{type(model).__name__}", key="plugins.skip.layers")
    layers = list(model)
    runs = find_runs(layers)
    chosen = _inserted(layers, runs) if settings.layers == "inserted" else runs
    if not chosen:
        where = ("right after the first conv (with only ReLU, BatchNorm or pooling in between)"
                 if settings.layers == "inserted" else "anywhere in the model")
        raise SpecError(f"found no run of shape-preserving convs {where}: the skip plugin wraps Conv2d layers "
                        "with stride 1, as many output as input channels and 'same' padding (odd kernel, "
                        "padding kernel // 2), each optionally followed by BatchNorm2d and ReLU"
                        + ("; try layers = \"all\"" if settings.layers == "inserted" and runs else ""),
                        key="plugins.skip.layers", allowed=plugin.schema["layers"].choices)
    blocks_at = {}  # start index -> (number of layers replaced, residual blocks)
    for start, units in chosen:
        blocks, size = [], settings.block
        for b in range(0, len(units), size):
            group = [m for unit in units[b:b + size] for m in unit]
            channels = group[0].in_channels
            if settings.final_relu and isinstance(group[-1], nn.ReLU):
                group.pop()  # Residual applies it after the addition
            blocks.append(Residual(nn.Sequential(*group),
                                   identity_conv(channels) if settings.shortcut == "projection" else None,
                                   gate=settings.gate == "zero", final_relu=settings.final_relu))
        blocks_at[start] = (sum(len(u) for u in units), blocks)
    out, i = [], 0
    while i < len(layers):
        if i in blocks_at:
            count, blocks = blocks_at[i]
            out += blocks
            i += count
        else:
            out.append(layers[i])
            i += 1
    return nn.Sequential(*out)


@hookimpl
def change_model(model, settings):
    return wrap(model, settings)


@hookimpl
def describe_setup(settings):
    which = "the inserted convs" if settings.layers == "inserted" else "every run of shape-preserving convs"
    gate = "a learnable gate starting at 0" if settings.gate == "zero" else "no gate"
    shortcut = "identity" if settings.shortcut == "identity" else "1x1-conv"
    relu = ", ReLU after the addition" if settings.final_relu else ""
    return {"residual blocks": f"{which} in blocks of {settings.block}, {shortcut} shortcut, {gate}{relu}"}
