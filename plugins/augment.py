"""Part 1 preprocessing as batch transforms: normalize, flip, pad_crop.

Each works on a whole float batch (N, C, H, W) with tensor ops on the batch's device: no
per-image Python loop. A spec's `data.transforms` list fixes the order, which matters: the
homework flips before normalizing and zero-pads after.
"""
from __future__ import annotations

import torch
from torch import nn

from runner import Setting, hookimpl


class Normalize(nn.Module):
    """(x - mean) / std per channel, with statistics of the training images (pixel scale 0-255)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).float())

    @classmethod
    def fit(cls, images: torch.Tensor) -> "Normalize":
        # float64 sums: 10,000 x 1,024 values per channel would lose digits in float32.
        pixels = images.transpose(0, 1).reshape(images.shape[1], -1).double()
        return cls(pixels.mean(dim=1), pixels.std(dim=1))

    def forward(self, x):
        return (x - self.mean) / self.std


class RandomFlip(nn.Module):
    """Mirror each image left-right with probability p."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        flip = torch.rand(x.shape[0], device=x.device) < self.p
        return torch.where(flip[:, None, None, None], x.flip(3), x)


class PadCrop(nn.Module):
    """Zero-pad `pad` pixels on each side, then cut a random window of the original size per image."""

    def __init__(self, pad: int = 4):
        super().__init__()
        self.pad = pad
        self._grids: dict = {}  # index grids per batch shape: made once, not every step (GPU launches)

    def forward(self, x):
        n, c, h, w = x.shape
        key = (n, c, h, w, x.device)
        if key not in self._grids:
            arange = lambda size: torch.arange(size, device=x.device)
            self._grids[key] = (arange(n)[:, None, None, None], arange(c)[None, :, None, None],
                                arange(h)[None, None, :, None], arange(w)[None, None, None, :])
        images, channels, rows, cols = self._grids[key]
        top, left = torch.randint(0, 2 * self.pad + 1, (2, n, 1, 1, 1), device=x.device)
        padded = nn.functional.pad(x, (self.pad,) * 4)
        return padded[images, channels, rows + top, cols + left]


@hookimpl
def register_transforms(register):
    register("normalize", lambda settings, train_images: Normalize.fit(train_images), {},
             help="per-channel zero mean, unit std (training-set statistics); train and eval")
    register("flip", lambda settings, _: RandomFlip(settings["p"]),
             {"p": Setting(0.5, "probability of a flip", min=0.0, max=1.0)},
             train_only=True, help="random horizontal flip; training only")
    register("pad_crop", lambda settings, _: PadCrop(settings["pad"]),
             {"pad": Setting(4, "zero padding on each side", min=0)},
             train_only=True, help="zero-pad then random crop back to 32x32; training only")


# ---- the report: what each added transform changed ------------------------------------------

def _protocol(spec) -> tuple:
    """What must match for two specs to differ only in their transforms: the model, the training
    recipe and the data's batches."""
    table = spec.spec
    data = {k: v for k, v in table.get("data", {}).items() if k != "transforms"}
    return repr((table.get("model"), table.get("train"), data))


def _extends(longer: list, shorter: list) -> bool:
    """Whether `shorter` is `longer` with some transforms left out (same order)."""
    rest = iter(longer)
    return len(shorter) < len(longer) and all(name in rest for name in shorter)


def class_changes(this, previous) -> list[tuple[str, float, float, float]]:
    """(class, accuracy before, after, change) per class, mean over seeds; [] without per-class results."""
    if not (this.representative.get("per_class") and previous.representative.get("per_class")):
        return []
    classes = this.representative["per_class"]["classes"]
    return [(name, b, a, a - b) for name, b, a in zip(classes, previous.class_accuracy(), this.class_accuracy())
            if a is not None and b is not None]


def _classes_text(changes, sign: int) -> str | None:
    """The three classes that gained (sign 1) or lost (-1) most, as text: "cat (+8.0 points), ..."."""
    moved = sorted((c for c in changes if c[3] * sign > 0), key=lambda c: -c[3] * sign)[:3]
    return ", ".join(f"{name} ({change * 100:+.1f} points)" for name, _, _, change in moved) or "none"


@hookimpl
def report_sections(runs):
    """For each trained spec whose spec is another's with transforms added (same model, recipe and
    data): the changes in words and per class (fields vs_previous, class_gains, class_losses),
    a per-class table; and, in the last spec of such a chain, its runs' training curves on one plot."""
    from runner import figures
    from runner.artifacts import save_figure
    from runner.report import Figure, Section, Table, compare

    # The questions' chain (P1 Q1 to Q4): a study that reuses a question's recipe is no step of it.
    trained = [spec for spec in runs.values() if spec.trained and spec.is_question]
    sections, chains = [], {}
    for i, this in enumerate(trained):
        transforms = this.spec.get("data", {}).get("transforms", [])
        earlier = [s for s in trained[:i] if _protocol(s) == _protocol(this)
                   and _extends(transforms, s.spec.get("data", {}).get("transforms", []))]
        if not earlier:
            continue
        previous = earlier[-1]
        chain = chains.pop(previous.name, [previous])
        chains[this.name] = chain + [this]
        fields = {"vs_previous": compare(this, previous)}
        before = previous.mean_sd("final_running_train_accuracy")[0]
        fields["vs_previous"]["gap"] = None if before is None else before - previous.mean_sd()[0]
        changes = class_changes(this, previous)
        blocks = []
        if changes:
            fields["class_gains"], fields["class_losses"] = _classes_text(changes, 1), _classes_text(changes, -1)
            added = [t for t in transforms if t not in previous.spec.get("data", {}).get("transforms", [])]
            blocks.append(Table(["spec"] + [c[0] for c in changes], [
                [previous.name] + [f"{c[1]:.1%}" for c in changes],
                [this.name] + [f"{c[2]:.1%}" for c in changes],
                ["change (points)"] + [f"{c[3] * 100:+.1f}" for c in changes]],
                f"Per-class test accuracy before and after adding {', '.join(added)} (mean over seeds).", small=True))
        sections.append(Section(spec=this.name, blocks=blocks, fields=fields))
    for last, chain in chains.items():
        figure = figures.running_accuracy_compared(
            {s.name: [f"{r['run_dir']}/metrics.csv" for r in s.runs] for s in chain},
            {s.name: s.mean_sd()[0] for s in chain})
        path = runs.workdir / f"transforms_compared_{last}.png"
        save_figure(path, figure)
        sections.append(Section(spec=last, blocks=[Figure(
            path, "Running training accuracy (over the last epoch, mean over seeds) of "
            + ", ".join(s.name for s in chain)
            + ", each adding transforms to the one before; dots: test accuracy.", 0.6)]))
    return sections
