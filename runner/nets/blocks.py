"""Building blocks that models and plugins share: the skip plugin builds residual blocks, the
init plugin's Fixup finds them."""
from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """y = shortcut(x) + gate * branch(x), optionally followed by ReLU."""

    def __init__(self, branch: nn.Sequential, shortcut: nn.Module | None = None, gate: bool = False,
                 final_relu: bool = False):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.gate = nn.Parameter(torch.zeros(())) if gate else None
        self.final_relu = final_relu

    def forward(self, x):
        # The branch starts with a conv, so its in-place ReLUs never touch x.
        f = self.branch(x)
        if self.gate is not None:
            f = self.gate * f
        y = (x if self.shortcut is None else self.shortcut(x)) + f
        return torch.relu(y) if self.final_relu else y

    def extra_repr(self) -> str:
        return (f"shortcut={'identity' if self.shortcut is None else 'projection'}, "
                f"gate={'zero-init scalar' if self.gate is not None else 'none'}, final_relu={self.final_relu}")
