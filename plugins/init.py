"""Part 2 fix without removing a conv or adding BatchNorm: careful weight initialization.

scheme = "kaiming": every conv (and, with layers = "all", linear) weight is drawn from
kaiming_normal_ (fan_in, ReLU gain: std sqrt(2 / fan_in)), biases set to zero, so the
activation scale neither shrinks nor grows through a deep ReLU stack. PyTorch's default
(kaiming_uniform_ with a = sqrt(5), std sqrt(1 / (3 fan_in))) shrinks the signal by about
sqrt(6) per conv + ReLU, which is what makes gradients vanish in the deep plain net.

scheme = "fixup" (Zhang et al. 2019), for models the skip plugin has wrapped with final_relu =
true: kaiming as above, then in each of the L residual blocks with m convs in its branch, the
branch's last conv is set to zero (weight and bias) and its other convs are scaled by
L^(-1/(2m-2)); every block thus starts as its shortcut. A branch must not end in a ReLU after
that zeroed conv: the ReLU would see exactly 0, pass no gradient, and the branch would stay
zero for good (an error says so). Left out of Fixup here: its scalar biases and multipliers, and zeroing
the classifier (the homework's classifier is a conv outside the blocks and keeps kaiming).

Projection shortcuts of residual blocks keep their identity initialization; BatchNorm is left
alone. change_model hooks run in the spec's [plugins.*] order: list [plugins.skip] before
[plugins.init] for fixup.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from runner import Plugin, SpecError, hookimpl, setting
from runner.blocks import Residual


@dataclass(frozen=True)
class Settings:
    scheme: str = setting("kaiming", "kaiming: He normal (fan_in, ReLU) weights, zero biases; fixup: kaiming, "
                          "then residual branches from the skip plugin start at zero (Fixup)",
                          choices=("kaiming", "fixup"))
    layers: str = setting("all", "which layers kaiming re-initializes: convs and linears, or convs only",
                          choices=("all", "conv"))


plugin = Plugin(settings=Settings, help="re-initialize the model's weights (He/Kaiming, or Fixup with skip)")

NO_BLOCKS = ("scheme \"fixup\" needs residual blocks: enable the skip plugin and list [plugins.skip] before "
             "[plugins.init] in the spec, so its blocks exist when init runs")
FINAL_RELU_NEEDED = ("scheme \"fixup\" zeroes each residual branch's last conv, and a ReLU after it passes no "
                     "gradient at 0, so the branch would never train: set final_relu = true in [plugins.skip] "
                     "to move the ReLU after the addition")


def _targets(model: nn.Module, which: str) -> list[nn.Module]:
    # Projection shortcuts start as the identity on purpose; kaiming would undo that.
    shortcuts = {id(m) for block in model.modules() if isinstance(block, Residual) and block.shortcut is not None
                 for m in block.shortcut.modules()}
    kinds = (nn.modules.conv._ConvNd,) if which == "conv" else (nn.modules.conv._ConvNd, nn.Linear)
    return [m for m in model.modules() if isinstance(m, kinds) and id(m) not in shortcuts]


def kaiming(model: nn.Module, which: str = "all") -> None:
    with torch.no_grad():
        for module in _targets(model, which):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                module.bias.zero_()


def fixup(model: nn.Module, which: str = "all") -> int:
    """Kaiming, then Fixup's rescaling of every residual branch; returns the number of blocks."""
    blocks = [m for m in model.modules() if isinstance(m, Residual)]
    if not blocks:
        raise SpecError(NO_BLOCKS, key="plugins.init.scheme")
    branches = []  # per block: its branch's convs, in order
    for block in blocks:
        layers = list(block.branch.modules())
        convs = [m for m in layers if isinstance(m, nn.modules.conv._ConvNd)]
        if convs and any(isinstance(m, nn.ReLU) for m in layers[layers.index(convs[-1]) + 1:]):
            raise SpecError(FINAL_RELU_NEEDED, key="plugins.skip.final_relu", allowed=(True,))
        branches.append(convs)
    kaiming(model, which)
    count = len(blocks)
    with torch.no_grad():
        for convs in branches:
            m = len(convs)
            for conv in convs[:-1]:  # none when m == 1: the exponent is then undefined, Fixup scales nothing
                conv.weight.mul_(count ** (-1.0 / (2 * m - 2)))
            if convs:
                convs[-1].weight.zero_()
                if convs[-1].bias is not None:
                    convs[-1].bias.zero_()
    return count


@hookimpl
def configure(spec, settings):
    # Checked from the spec, before any model exists (runner validate, a suite's first step);
    # fixup() checks the blocks themselves again.
    if settings.scheme != "fixup":
        return
    order = spec.plugin_names()
    if "skip" not in order or order.index("skip") > order.index("init"):
        raise SpecError(NO_BLOCKS, key="plugins.init.scheme")
    if not spec["plugins"]["skip"]["final_relu"]:
        raise SpecError(FINAL_RELU_NEEDED, key="plugins.skip.final_relu", allowed=(True,))


@hookimpl
def change_model(model, settings):
    if settings.scheme == "fixup":
        fixup(model, settings.layers)
    else:
        kaiming(model, settings.layers)
    return None


@hookimpl
def describe_setup(settings):
    which = "convs and linears" if settings.layers == "all" else "convs"
    if settings.scheme == "fixup":
        return {"initialization": f"Fixup: He normal on the {which}, each residual branch's last conv zeroed, "
                                  "its others scaled down with depth"}
    return {"initialization": f"He normal (fan_in, ReLU gain) on the {which}, zero biases"}
