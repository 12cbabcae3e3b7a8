"""Adversarial attacks on a trained model, batched: the iterative fast gradient sign method and
the measures an attack reports (its stop test, distortion, the 8-bit images it delivers).

The model takes pixel values 0-255 (a trained runner model carries its own normalization), so
every iterate is an image.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..nets.input_grad import input_gradients
from ..progress import Progress
from ..results import finite


@dataclass
class AttackResult:
    """Per image (all on the input's device)."""

    images: torch.Tensor       # float (N, C, H, W), 0..255: the adversarial image, or the last iterate
    steps: torch.Tensor        # int64: steps taken when the goal was met; max_steps for failures
    success: torch.Tensor      # bool: the goal probability reached `confidence`
    predicted: torch.Tensor    # int64: the model's class for `images`
    probability: torch.Tensor  # float: its probability
    goal_probability: torch.Tensor  # float: max wrong-class probability (or the target's), the stop test
    # int64: the first step at which the model's class was wrong (-1: never), which the 99% stop
    # rule overshoots by the rest of `steps`
    first_wrong: torch.Tensor | None = None


# Images per forward/backward pass. At 1,000 images a Table 1 net's activations are ~130 MB
# tensors, which the C allocator maps fresh from the kernel and zero-fills on every step (half
# the attack's time went to the system); at 128 they are 17 MB, under the allocator's 32 MB
# threshold, and reused from the heap. 64 ran as fast on one thread (bench/attack_speed.py);
# the larger pass halves the parallel regions two threads must meet at. Parts are near-equal,
# so a larger active set is split into parts of at least 64 images: every image goes through
# the same kernels as in one pass of its whole active set (tiny batches, under 8 images on this
# CPU, take other kernels with other rounding).
PASS_IMAGES = 128


class _Batch:
    """The attack's state over a batch: the iterates and what is recorded per image."""

    def __init__(self, images, labels):
        self.x = images.detach().float().clone()
        self.original = self.x.clone()
        self.labels = labels.to(self.x.device)
        n, device = self.x.shape[0], self.x.device
        self.steps = torch.zeros(n, dtype=torch.long, device=device)
        self.success = torch.zeros(n, dtype=torch.bool, device=device)
        self.predicted = torch.zeros(n, dtype=torch.long, device=device)
        self.probability = torch.zeros(n, device=device)
        self.goal_probability = torch.zeros(n, device=device)
        self.first_wrong = torch.full((n,), -1, dtype=torch.long, device=device)

    def record(self, part, step, probs, goal, done) -> None:
        top = probs.max(1)
        self.predicted[part], self.probability[part] = top.indices, top.values
        now_wrong = (top.indices != self.labels[part]) & (self.first_wrong[part] < 0)
        self.first_wrong[part[now_wrong]] = step
        self.goal_probability[part], self.steps[part] = goal, step
        self.success[part[done]] = True

    def result(self) -> AttackResult:
        return AttackResult(self.x, self.steps, self.success, self.predicted, self.probability,
                            self.goal_probability, self.first_wrong)


def iterative_fgsm(model, images, labels, *, eps: float, max_steps: int, confidence: float = 0.99,
                   bound: float = 0.0, target: int | None = None, pass_images: int = PASS_IMAGES) -> AttackResult:
    """Iterative FGSM on a batch; each image stops on its own at the first iterate that meets the goal.

    The step: x <- clamp(x + eps * sign(grad_x J(x, y)), 0, 255), J the cross-entropy on the true
    label (descending J(x, target) with a target), clamped to the L-inf ball of radius `bound`
    around the original when bound > 0. The goal (a wrong class, or the target, with probability
    >= confidence) is checked before every step, so an image already wrong at `confidence` takes 0
    steps. Finished images leave the batch and stay frozen. With a target, images of that class
    are failures at 0 steps: they cannot become adversarial by reaching their own class.
    """
    batch = _Batch(images, labels)
    active = torch.arange(batch.x.shape[0], device=batch.x.device)
    if target is not None:
        active = active[batch.labels != target]
    # BatchNorm on running statistics (images do not influence each other), frozen weights, and the
    # cheaper backward passes of runner.input_grad, which give autograd's gradients bit for bit.
    with input_gradients(model):
        for step in range(max_steps + 1):
            if active.numel() == 0:
                break
            finished = [_step(model, batch, part, step, eps, max_steps, confidence, bound, target)
                        for part in active.tensor_split(math.ceil(active.numel() / pass_images))]
            active = active[~torch.cat(finished)]
    return batch.result()


def _step(model, batch: _Batch, part, step, eps, max_steps, confidence, bound, target) -> torch.Tensor:
    """One step for the images `part` of the active set; which of them met the goal before it."""
    labels = batch.labels[part]
    xa = batch.x[part].requires_grad_(True)
    with torch.enable_grad():
        logits = model(xa)
    probs = logits.detach().float().softmax(1)
    goal = goal_of(probs, labels, target)
    done = goal >= confidence
    batch.record(part, step, probs, goal, done)
    keep = ~done
    if step == max_steps or not keep.any():
        return done
    aim = labels if target is None else torch.full_like(labels, target)
    # Summed, so each image's gradient is its own loss's (mean would only rescale; sign ignores it).
    loss = F.cross_entropy(logits, aim, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xa)
    sign = -eps if target is not None else eps  # descend the target's loss, ascend the true label's
    moved = grad.sign_().mul_(sign).add_(xa.detach()).clamp_(0.0, 255.0)
    if bound > 0:
        start = batch.original[part]
        moved = torch.minimum(torch.maximum(moved, start - bound), start + bound)
    batch.x[part[keep]] = moved[keep]
    return done


def goal_of(probs, labels, target: int | None = None) -> torch.Tensor:
    """The attack's stop test: the best wrong class's probability, or the target's."""
    if target is None:
        return probs.scatter(1, labels[:, None], -1.0).amax(1)
    return probs[:, target]


def distortion(adversarial, original) -> dict[str, torch.Tensor]:
    """L-inf, L2 (pixel units 0-255) and PSNR (dB; inf when identical) per image."""
    delta = (adversarial.float() - original.float()).flatten(1)
    mse = delta.pow(2).mean(1)
    return {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1),
            "psnr": 10 * torch.log10(255.0 ** 2 / mse)}


def to_uint8(images) -> torch.Tensor:
    """The nearest 8-bit images; exact for an attack with integer eps (its iterates are integers)."""
    return images.round().clamp(0, 255).to(torch.uint8)


def perturbation_image(adversarial, originals) -> tuple[torch.Tensor, float]:
    """(adversarial - originals) * gain + 128 as uint8 images, one gain for all so they compare
    (the largest change reaches 127 gray levels from gray); and the gain."""
    delta = adversarial.float() - originals.float()
    peak = float(delta.abs().amax()) if delta.numel() else 0.0
    gain = 127.0 / peak if peak > 0 else 1.0
    return (delta * gain + 128).round().clamp(0, 255).to(torch.uint8), gain


def spread(measured, success, first_wrong, steps, indices, labels, reached, names) -> dict:
    """How the fooled images' distortion is spread (quartiles of L-inf and PSNR, the most damaged
    image) and how far the 99% rule carries an image past its first wrong class."""
    if not bool(success.any()):
        return dict.fromkeys(("reached_counts", "steps_counts", "steps_to_wrong_counts", "linf_quantiles",
                              "psnr_quantiles", "median_steps_to_wrong", "median_overshoot_steps", "worst"))
    quantiles = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
    linf = measured["linf"][success].float().cpu()
    psnr = measured["psnr"][success].float().cpu()
    psnr = psnr[torch.isfinite(psnr)]
    # Below 50% confidence an image can meet the goal while its class is still right: no overshoot.
    wrong = torch.where(first_wrong < 0, steps, first_wrong)[success].cpu()
    worst = int(measured["linf"].masked_fill(~success, -1).argmax())
    classes = len(names)
    reached_counts = torch.bincount((labels[success] * classes + reached[success]).cpu(), minlength=classes ** 2)
    return {
        # The report draws its figures from these, so a clone without adversarial_set.pt still has them.
        "reached_counts": reached_counts.view(classes, classes).tolist(),  # true class x class reached
        "steps_counts": torch.bincount(steps[success].cpu()).tolist(),  # fooled images by steps to 99%
        "steps_to_wrong_counts": torch.bincount(wrong).tolist(),  # ... by steps to their first wrong class
        # quantiles: min, q1, median, q3, p90, max
        "linf_quantiles": [round(float(v), 2) for v in torch.quantile(linf, quantiles)],
        "psnr_quantiles": [round(float(v), 2) for v in torch.quantile(psnr, quantiles)] if psnr.numel() else None,
        "median_steps_to_wrong": float(wrong.median()),
        "median_overshoot_steps": float((steps[success].cpu() - wrong).median()),
        "worst": {"test_index": int(indices[worst]), "true": names[int(labels[worst])],
                  "reached": names[int(reached[worst])], "steps": int(steps[worst]),
                  "steps_to_wrong": int(first_wrong[worst]), "linf": float(measured["linf"][worst]),
                  "psnr": finite(measured["psnr"][worst], 3)},
    }


def top_switches(labels: torch.Tensor, predicted: torch.Tensor, names, most: int = 5) -> list[dict]:
    """The most common (true class -> class the attack reached) among fooled images, with their
    share of them: which wrong classes the attack finds nearest."""
    classes = len(names)
    counts = torch.bincount(labels * classes + predicted, minlength=classes * classes).cpu()
    total = int(counts.sum())
    top = [int(i) for i in counts.argsort(descending=True, stable=True)[:most] if counts[i] > 0]
    return [{"from": names[i // classes], "to": names[i % classes], "count": int(counts[i]),
             "share": round(int(counts[i]) / total, 4)} for i in top]


def attack_in_batches(model, images, labels, *, batch_size: int, name: str, **attack) -> tuple[AttackResult, float]:
    """iterative_fgsm over many images, `batch_size` at a time with a progress display named
    `name` (fooled so far / attacked); the results joined, and the seconds it took (the device
    synchronized, so they are the attack's own)."""
    parts = []
    _sync(images.device)
    started = time.perf_counter()
    with Progress(len(images), name, unit="images") as progress:
        for start in range(0, len(images), batch_size):
            end = start + batch_size
            parts.append(iterative_fgsm(model, images[start:end], labels[start:end], **attack))
            fooled = sum(int(part.success.sum()) for part in parts)
            progress.update(len(parts[-1].steps), fooled=f"{fooled}/{progress.done + len(parts[-1].steps)}")
    _sync(images.device)
    seconds = time.perf_counter() - started
    if not parts:
        none = torch.zeros(0, dtype=torch.long, device=images.device)
        return AttackResult(images.float().clone(), none, none.bool(), none, none.float(), none.float(), none), seconds
    joined = {f.name: torch.cat([getattr(part, f.name) for part in parts]) for f in fields(AttackResult)}
    return AttackResult(**joined), seconds


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
