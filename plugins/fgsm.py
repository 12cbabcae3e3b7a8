"""Part 3 Q1: adversarial images by the iterative fast gradient sign method, on a trained model.

The run's model is the trained model of another spec (`source`, its declared run_model): the spec
names no model and trains nothing, and the loaded model carries its own normalization, so the
attack works on real pixel values 0-255 and every iterate is an image (integer eps keeps it an
exact 8-bit image).

The homework's step, repeated per image until a wrong class has probability >= confidence:

    x <- clamp(x + eps * sign(grad_x J(x, y)), 0, 255)     J: cross-entropy on the true label y

with `bound` > 0 it is also clamped to the L-inf ball around the original (the basic iterative
method of Kurakin et al.), and with `target` >= 0 it descends J(x, target) instead until that
class reaches the confidence. Images that reach max_steps without it are failures, reported.

Chosen images (shown, saved as PNG): the first `per_class` correctly classified test images of
each class, in test-set order, a fixed rule so reruns pick the same ones. With `attack_all`,
every correctly classified test image is attacked too, for statistics and for the transfer
spec (adversarial_set.pt).
"""
from __future__ import annotations

import csv
import io
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from runner import Plugin, figures, hookimpl, setting
from runner.artifacts import atomic_path, save_figure, save_torch, write_text
from runner.input_grad import input_gradients
from runner.progress import Progress
from runner.sources import probabilities

@dataclass(frozen=True)
class Settings:
    source: str = setting("p1_q4_crop", "spec whose latest completed run (same --out, same --quick) is attacked",
                          reads="model")
    eps: float = setting(1.0, "step size in pixel units (0-255); an integer keeps every iterate an 8-bit image",
                         min=0.0)
    # A quick run's barely trained net is rarely fooled at 99%: uncapped, every image would take all
    # 200 steps and the attack would outlast the training.
    max_steps: int = setting(200, "steps per image at most; images not fooled by then count as failures", min=0,
                             quick=20)
    confidence: float = setting(0.99, "stop once a wrong class (or the target) has at least this probability",
                                min=0.0, max=1.0)
    bound: float = setting(0.0, "L-inf radius around the original in pixel units (0: none, only [0, 255])",
                           min=0.0)
    target: int = setting(-1, "class to push images into (-1: any wrong class, the homework's attack)",
                          min=-1, max=9)
    per_class: int = setting(2, "images per class shown side by side with their originals", min=0)
    attack_all: bool = setting(True, "also attack every correctly classified test image, for statistics")
    batch_size: int = setting(1000, "images attacked at once", min=1)


# The attacked model (the trained model of the spec `source` names) is this run's model.
plugin = Plugin(settings=Settings, run_model="source",
                help="iterative FGSM until the net is fooled with the given confidence (P3 Q1)")

SET_FILE = "adversarial_set.pt"  # what a transfer evaluation reads (plugins/transfer.py)


# ---- the attack -----------------------------------------------------------------------------

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


def iterative_fgsm(model, images, labels, *, eps: float, max_steps: int, confidence: float = 0.99,
                   bound: float = 0.0, target: int | None = None, pass_images: int = PASS_IMAGES) -> AttackResult:
    """Iterative FGSM on a batch; each image stops on its own at the first iterate that meets the goal.

    The goal is checked before every step, so an image already wrong at `confidence` takes 0
    steps (the plugin only feeds correctly classified images, where that cannot happen).
    Finished images leave the batch and stay frozen. With a target, images of that class are
    failures at 0 steps: they cannot become adversarial by reaching their own class.
    """
    x = images.detach().float().clone()
    original = x.clone()
    labels = labels.to(x.device)
    n = x.shape[0]
    steps = torch.zeros(n, dtype=torch.long, device=x.device)
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    predicted = torch.zeros(n, dtype=torch.long, device=x.device)
    probability = torch.zeros(n, device=x.device)
    goal_probability = torch.zeros(n, device=x.device)
    first_wrong = torch.full((n,), -1, dtype=torch.long, device=x.device)
    active = torch.arange(n, device=x.device)
    if target is not None:
        active = active[labels != target]
    sign = -eps if target is not None else eps  # descend the target's loss, ascend the true label's
    # BatchNorm on running statistics (images do not influence each other), frozen weights, and the
    # cheaper backward passes of runner.input_grad, which give autograd's gradients bit for bit.
    with input_gradients(model):
        for step in range(max_steps + 1):
            if active.numel() == 0:
                break
            finished = []
            for part in active.tensor_split(math.ceil(active.numel() / pass_images)):
                xa = x[part].requires_grad_(True)
                with torch.enable_grad():
                    logits = model(xa)
                probs = logits.detach().float().softmax(1)
                goal = goal_of(probs, labels[part], target)
                done = goal >= confidence
                top = probs.max(1)
                predicted[part], probability[part] = top.indices, top.values
                now_wrong = (top.indices != labels[part]) & (first_wrong[part] < 0)
                first_wrong[part[now_wrong]] = step
                goal_probability[part], steps[part] = goal, step
                success[part[done]] = True
                finished.append(done)
                keep = ~done
                if step == max_steps or not keep.any():
                    continue
                aim = labels[part] if target is None else torch.full_like(labels[part], target)
                # Summed, so each image's gradient is its own loss's (mean would only rescale; sign ignores it).
                loss = F.cross_entropy(logits, aim, reduction="sum")
                (grad,) = torch.autograd.grad(loss, xa)
                moved = grad.sign_().mul_(sign).add_(xa.detach()).clamp_(0.0, 255.0)
                if bound > 0:
                    start = original[part]
                    moved = torch.minimum(torch.maximum(moved, start - bound), start + bound)
                x[part[keep]] = moved[keep]
            active = active[~torch.cat(finished)]
    return AttackResult(x, steps, success, predicted, probability, goal_probability, first_wrong)


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
    # Exact for integer eps (iterates are integers); otherwise the nearest 8-bit image, checked after.
    return images.round().clamp(0, 255).to(torch.uint8)


# ---- PNG I/O (Pillow; a 32x32 image is small enough to pass through Python lists) -------------

def save_png(path, image_uint8) -> None:
    from PIL import Image

    c, h, w = image_uint8.shape
    data = bytes(image_uint8.permute(1, 2, 0).contiguous().flatten().tolist())
    with atomic_path(path) as tmp:
        Image.frombytes("RGB", (w, h), data).save(tmp, format="PNG")


def load_png(path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        flat = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return flat.reshape(h, w, 3).permute(2, 0, 1).contiguous()


# ---- hooks ----------------------------------------------------------------------------------

@hookimpl
def run_finished(run, results, settings):
    model = run.model.eval()
    target = settings.target if settings.target >= 0 else None
    attack = dict(eps=settings.eps, max_steps=settings.max_steps, confidence=settings.confidence,
                  bound=settings.bound, target=target)
    summary = results.setdefault("fgsm", {})
    summary.update({key: getattr(settings, key) for key in ("eps", "max_steps", "confidence", "bound", "target")})
    summary["source_spec"], summary["source_run"] = results["model_source"]["spec"], results["model_source"]["run"]
    summary["source_test_accuracy"] = results.get("test_accuracy")

    images, labels, names = run.test_images, run.test_labels, run.class_names
    correct = probabilities(model, images, settings.batch_size).argmax(1) == labels
    if target is not None:
        correct &= labels != target  # an image of the target class cannot be pushed into it

    chosen = torch.cat([torch.nonzero(correct & (labels == c)).flatten()[:settings.per_class]
                        for c in range(len(names))])
    pairs = _attack_pairs(run, model, chosen, attack, settings, summary)

    if settings.attack_all:
        everything = torch.nonzero(correct).flatten()
        full = _attack_set(run, model, everything, attack, settings, summary)
    else:  # the transfer spec still gets a set: the pairs
        full = pairs
    save_torch(run.dir / SET_FILE, {
        "images": full["images"].cpu(), "labels": full["labels"].cpu(), "indices": full["indices"].cpu(),
        "success": full["success"].cpu(), "steps": full["steps"].cpu(), "predicted": full["predicted"].cpu(),
        # Lets a reader check it holds the same test images before comparing with unperturbed ones.
        "originals_checksum": int(images[full["indices"]].long().sum()),
        "test_batches": list(run.spec["data"]["test"]),
        "pairs": {key: pairs[key].cpu() for key in ("images", "originals", "labels", "indices", "success",
                                                     "predicted")},
        "class_names": list(names), "source_spec": summary["source_spec"], "source_run": summary["source_run"],
        "attack": attack,
    })
    everything = settings.attack_all
    results["headline"] = {
        "name": "fooled",
        "value": summary["success_rate"] if everything else summary["pairs_success"] / max(summary["pairs_count"], 1),
        "seconds": summary.get("attack_seconds"), "per_second": summary.get("attack_images_per_second")}


def _attack_pairs(run, model, chosen, attack, settings, summary) -> dict:
    names = run.class_names
    originals, labels = run.test_images[chosen], run.test_labels[chosen]
    result = iterative_fgsm(model, originals, labels, **attack)
    adversarial = to_uint8(result.images)
    folder = run.dir / "adversarial"
    rows, reloaded = [], []
    rank = {}  # k: the image's rank within its class among the chosen
    for i, (index, label) in enumerate(zip(chosen.tolist(), labels.tolist())):
        k = rank[label] = rank.get(label, -1) + 1
        stem = f"{label}_{names[label]}_{k}"
        save_png(folder / f"{stem}_orig.png", originals[i].cpu())
        save_png(folder / f"{stem}_adv.png", adversarial[i].cpu())
        reloaded.append(load_png(folder / f"{stem}_adv.png"))
        rows.append({"class": label, "class_name": names[label], "k": k, "test_index": index, "file": stem})
    # The delivered artifact is the PNG: check that it, not the float tensor, fools the model.
    back = torch.stack(reloaded).to(run.device) if rows else adversarial
    probs = probabilities(model, back, settings.batch_size)
    still = (goal_of(probs, labels, attack["target"]) >= attack["confidence"]) & result.success
    back_prob, back_class = probs.max(1)
    measured = distortion(adversarial, originals)
    for i, row in enumerate(rows):
        row.update({
            "steps": int(result.steps[i]), "steps_to_wrong": int(result.first_wrong[i]),
            "success": bool(result.success[i]),
            "predicted": int(back_class[i]), "predicted_name": names[int(back_class[i])],
            "probability": round(float(back_prob[i]), 5), "png_adversarial": bool(still[i]),
            "linf": float(measured["linf"][i]), "l2": round(float(measured["l2"][i]), 3),
            "psnr": _finite(measured["psnr"][i]),
        })
    _write_csv(folder / "pairs.csv", rows)
    summary.update({
        "pairs_count": len(rows),
        "pairs_missing_classes": [names[c] for c in range(len(names)) if c not in rank],
        "pairs_success": int(result.success.sum()),
        "pairs_png_adversarial": int(still.sum()),
        "pairs_median_steps": statistics.median([r["steps"] for r in rows]) if rows else None,
        "pairs": rows,
    })
    if rows:
        figure = _pairs_figure(originals.cpu(), adversarial.cpu(), rows, names, summary)
        save_figure(run.dir / "adversarial_pairs.png", figure)
        figures.close(figure)
        _show(run, originals, adversarial)
    return {"images": adversarial, "originals": originals, "labels": labels, "indices": chosen,
            "success": result.success, "steps": result.steps, "predicted": back_class}


def _attack_set(run, model, indices, attack, settings, summary) -> dict:
    parts = []
    _sync(run.device)
    started = time.perf_counter()
    with Progress(len(indices), f"{run.spec.name} attack", unit="images") as progress:
        for start in range(0, len(indices), settings.batch_size):
            batch = indices[start:start + settings.batch_size]
            parts.append(iterative_fgsm(model, run.test_images[batch], run.test_labels[batch], **attack))
            fooled = sum(int(part.success.sum()) for part in parts)
            progress.update(len(batch), fooled=f"{fooled}/{progress.done + len(batch)}")
    _sync(run.device)
    seconds = time.perf_counter() - started
    labels, originals = run.test_labels[indices], run.test_images[indices]
    if parts:
        steps, success = torch.cat([p.steps for p in parts]), torch.cat([p.success for p in parts])
        first_wrong = torch.cat([p.first_wrong for p in parts])
        images = to_uint8(torch.cat([p.images for p in parts]))
    else:
        steps = torch.zeros(0, dtype=torch.long, device=run.device)
        success = torch.zeros(0, dtype=torch.bool, device=run.device)
        first_wrong = steps.clone()
        images = originals.clone()
    # Rounding to 8 bits is exact for integer eps; for any other eps this counts what survives it.
    probs = probabilities(model, images, settings.batch_size)
    kept = (goal_of(probs, labels, attack["target"]) >= attack["confidence"]) & success
    measured = distortion(images, originals)
    won = steps[success].tolist()
    attacked = len(indices)
    mean = lambda key: _finite(measured[key][success].mean()) if won else None
    summary.update({
        "attacked": attacked,
        "succeeded": len(won),
        "failed_at_cap": attacked - len(won),
        "success_rate": round(len(won) / attacked, 5) if attacked else None,
        "uint8_adversarial": int(kept.sum()),
        "median_steps": statistics.median(won) if won else None,
        "mean_steps": round(statistics.fmean(won), 3) if won else None,
        "max_steps_used": max(won) if won else None,
        "mean_linf": mean("linf"), "mean_l2": mean("l2"), "mean_psnr": mean("psnr"),
        "attack_seconds": round(seconds, 3),
        "attack_images_per_second": round(attacked / seconds, 2) if seconds > 0 else None,
        "top_switches": top_switches(labels[success], probs.argmax(1)[success], run.class_names),
        **_spread(measured, success, first_wrong, steps, indices, labels, probs.argmax(1), run.class_names),
    })
    figure = _steps_figure(steps.tolist(), success.tolist(), attack["max_steps"], run.spec.name, summary)
    save_figure(run.dir / "steps_histogram.png", figure)
    figures.close(figure)
    return {"images": images, "labels": labels, "indices": indices, "success": success, "steps": steps,
            "predicted": probs.argmax(1)}


def _spread(measured, success, first_wrong, steps, indices, labels, reached, names) -> dict:
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
        "linf_quantiles": [round(float(v), 2) for v in torch.quantile(linf, quantiles)],  # min, q1, median, q3, p90, max
        "psnr_quantiles": [round(float(v), 2) for v in torch.quantile(psnr, quantiles)] if psnr.numel() else None,
        "median_steps_to_wrong": float(wrong.median()),
        "median_overshoot_steps": float((steps[success].cpu() - wrong).median()),
        "worst": {"test_index": int(indices[worst]), "true": names[int(labels[worst])],
                  "reached": names[int(reached[worst])], "steps": int(steps[worst]),
                  "steps_to_wrong": int(first_wrong[worst]), "linf": float(measured["linf"][worst]),
                  "psnr": _finite(measured["psnr"][worst])},
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


# ---- outputs --------------------------------------------------------------------------------

def _finite(value):
    value = float(value)
    return round(value, 3) if math.isfinite(value) else None  # JSON has no inf (an unchanged image's PSNR)


def _write_csv(path, rows) -> None:
    buffer = io.StringIO()
    columns = ["class", "class_name", "k", "test_index", "steps", "steps_to_wrong", "success", "predicted", "predicted_name",
               "probability", "png_adversarial", "linf", "l2", "psnr", "file"]
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _perturbation(adversarial, originals) -> tuple[torch.Tensor, float]:
    """(adv - orig) * gain + 128 as uint8, one gain for all so the images compare; and the gain."""
    delta = adversarial.float() - originals.float()
    peak = float(delta.abs().amax()) if delta.numel() else 0.0
    gain = 127.0 / peak if peak > 0 else 1.0
    return (delta * gain + 128).round().clamp(0, 255).to(torch.uint8), gain


def _pairs_figure(originals, adversarial, rows, names, summary):
    plt = figures.plt
    perturbation, gain = _perturbation(adversarial, originals)
    per_row = 2  # two originals of a class per figure row, each as original | adversarial | perturbation
    nrows = math.ceil(len(rows) / per_row)
    figure, axes = plt.subplots(nrows, 3 * per_row, figsize=(3 * per_row * 1.45, nrows * 1.75), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, row in enumerate(rows):
        r, c = divmod(i, per_row)
        panels = (
            (originals[i], f"{row['class_name']}\n(original)"),
            (adversarial[i], f"-> {row['predicted_name']} {row['probability']:.1%}\n{row['steps']} steps"
             + ("" if row["png_adversarial"] else " FAILED")),
            (perturbation[i], f"L-inf {row['linf']:.0f}, L2 {row['l2']:.0f}\nPSNR "
             + (f"{row['psnr']:.1f} dB" if row["psnr"] is not None else "inf")),
        )
        for j, (image, title) in enumerate(panels):
            ax = axes[r, 3 * c + j]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")  # matplotlib wants an array
            ax.set_title(title, fontsize=6.5, color="crimson" if j == 1 and not row["png_adversarial"] else "black")
    figure.suptitle(f"Iterative FGSM, eps {summary['eps']:g} per step until a wrong class has "
                    f">= {summary['confidence']:.0%}\noriginal | adversarial (8-bit PNG; the model's class and "
                    f"probability) | perturbation x{gain:.1f} + 128", fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_size_inches()[1]))  # room for the title
    return figure


def _steps_figure(steps, success, max_steps, title, summary):
    plt = figures.plt
    figure, axes = plt.subplots(figsize=(7, 3.8))
    won = [s for s, ok in zip(steps, success) if ok]
    lost = len(steps) - len(won)
    width = max(1, math.ceil((max(won, default=0) + 1) / 60))  # about 60 bars at most
    axes.hist(won, bins=range(0, max(won, default=0) + 2 * width, width), color="tab:blue",
              label=f"fooled at >= {summary['confidence']:.0%} ({len(won)})")
    if lost:
        axes.bar([max_steps + width], [lost], width=width, align="edge", color="tab:red",
                 label=f"not fooled in {max_steps} steps ({lost})")
    if won:
        axes.axvline(statistics.median(won), color="k", ls="--", lw=1, label=f"median {statistics.median(won):g}")
    axes.set(xlabel=f"FGSM steps needed (bars of {width})", ylabel="test images",
             title=f"{title}: steps per image, {len(steps)} correctly classified test images")
    axes.legend()
    axes.grid(alpha=0.3)
    return figure


def _show(run, originals, adversarial) -> None:
    """The pairs live (Visdom, when it is on for this run)."""
    perturbation, gain = _perturbation(adversarial.cpu(), originals.cpu())
    grid = torch.stack([originals.cpu(), adversarial.cpu(), perturbation], 1).flatten(0, 1)
    run.show_images("adversarial_pairs", grid,
                    f"original | adversarial | perturbation x{gain:.1f} + 128, {len(originals)} images")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the report ---------------------------------------------------------------------------

def switches_text(switches) -> str | None:
    """The commonest true -> reached class switches as text: "cat to dog (14.2%), ..."."""
    return ", ".join(f"{s['from']} to {s['to']} ({s['share']:.1%})" for s in switches) if switches else None


def reached_figure(run_dir: Path, title: str):
    """True class against the class the attack reached, over the fooled images of the run's
    adversarial set (None when the run kept none)."""
    path = Path(run_dir) / SET_FILE
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    names, fooled = saved["class_names"], saved["success"].bool()
    if not fooled.any():
        return None
    classes = len(names)
    counts = torch.bincount(saved["labels"][fooled] * classes + saved["predicted"][fooled], minlength=classes ** 2)
    return figures.confusion_matrix(counts.view(classes, classes).tolist(), names, title,
                                    xlabel="class reached by the attack", ylabel="true class")


@hookimpl
def report_sections(runs, specs):
    """Each attack's numbers as a table, its images, its steps and where its images went (true
    class against the class reached); the field `switches` for its explanation template."""
    from runner.report import Section, Table

    sections = []
    for spec in specs:
        summary = spec.representative.get("fgsm") or {}
        if not summary:
            continue
        pct = lambda key: "–" if summary.get(key) is None else f"{summary[key]:.1%}"
        number = lambda key, form="": "–" if summary.get(key) is None else format(summary[key], form)
        blocks = [Table(
            ["attacked net (its test accuracy)", "images attacked", "fooled", "median steps (most)",
             "mean L-inf", "mean L2", "mean PSNR (dB)", "seconds"],
            [[f"{summary.get('source_spec')} ({pct('source_test_accuracy')})", number("attacked"),
              f"{number('succeeded')} ({pct('success_rate')})",
              f"{number('median_steps', 'g')} ({number('max_steps_used')})", number("mean_linf", ".1f"),
              number("mean_l2", ".0f"), number("mean_psnr", ".1f"), number("attack_seconds", ".0f")]],
            f"Iterative FGSM on every correctly classified test image (eps {summary.get('eps'):g} gray level per step, "
            f"at most {summary.get('max_steps')} steps, until a wrong class has at least "
            f"{summary.get('confidence', 0):.0%}); distances in gray levels over the 3,072 values of an image.",
            small=True)]
        if spec.is_question:  # a question's attack; the transfer matrix's other rows keep their table
            blocks += _report_figures(spec, summary, runs.workdir)
        sections.append(Section(spec=spec.name, blocks=blocks,
                                fields={"switches": switches_text(summary.get("top_switches")),
                                        **pairs_fields(summary.get("pairs") or [])}))
    return sections


def pairs_fields(rows: list[dict]) -> dict:
    """The shown pairs' spread for the template: `pairs_linf` (median, min, max), `pairs_psnr`
    (min, max, dB) and `pairs_worst`, the most changed shown image's row."""
    fooled = [r for r in rows if r.get("success")]
    if not fooled:
        return dict.fromkeys(("pairs_linf", "pairs_psnr", "pairs_worst"))
    linf = [r["linf"] for r in fooled]
    psnr = [r["psnr"] for r in fooled if r.get("psnr") is not None]
    return {"pairs_linf": {"median": statistics.median(linf), "min": min(linf), "max": max(linf)},
            "pairs_psnr": {"min": min(psnr), "max": max(psnr)} if psnr else None,
            "pairs_worst": max(fooled, key=lambda r: r["linf"])}


def _report_figures(spec, summary, folder) -> list:
    """An attack's figures drawn for the page, from its summary and PNGs: the steps to a wrong
    class and to 99%, where the fooled images went, and the shown pairs in two full-width halves."""
    from runner.report import Figure

    names = (spec.representative.get("per_class") or {}).get("classes") or [str(c) for c in range(10)]
    title = spec.title
    drawn = []
    if summary.get("steps_counts"):
        drawn.append((_steps_report_figure(summary), "steps", 0.5,
                      f"Steps {title} needed per fooled image: to its first wrong class, and to {summary['confidence']:.0%} "
                      "on a wrong class, where the attack stops."))
    counts = summary.get("reached_counts")
    figure = (figures.confusion_matrix(counts, names, "", xlabel="class reached", ylabel="true class", size=(3.4, 3.0))
              if counts else reached_figure(spec.run_dir, ""))
    if figure is not None:
        drawn.append((figure, "reached", 0.5, f"Where the {summary.get('succeeded')} fooled images of {title} went: "
                                              "true class (rows) against the class reached (columns)."))
    rows = [r for r in summary.get("pairs", []) if (spec.run_dir / "adversarial" / f"{r['file']}_adv.png").is_file()]
    if rows:
        originals = torch.stack([load_png(spec.run_dir / "adversarial" / f"{r['file']}_orig.png") for r in rows])
        adversarial = torch.stack([load_png(spec.run_dir / "adversarial" / f"{r['file']}_adv.png") for r in rows])
        gain = _perturbation(adversarial, originals)[1]
        half = (len(rows) + 1) // 2 // 2 * 2  # an even count: both images of a class on one figure
        for part, chosen in enumerate((range(0, half), range(half, len(rows))), 1):
            picked = list(chosen)
            if not picked:
                continue
            first, last = rows[picked[0]]["class_name"], rows[picked[-1]]["class_name"]
            drawn.append((_pairs_page(originals[picked], adversarial[picked], [rows[i] for i in picked], gain),
                          f"pairs{part}", 1.0,
                          f"Adversarial images of {title}, {first} to {last} ({part} of 2): each original, its "
                          f"adversarial image (the class the net gives it, its probability, the steps taken) and the "
                          f"perturbation, amplified {gain:.1f}x around gray."))
    blocks = []
    for figure, key, width, caption in drawn:
        path = folder / f"fgsm_{key}_{spec.name}.png"
        save_figure(path, figure)
        figures.close(figure)
        blocks.append(Figure(path, caption, width))
    return blocks


def _steps_report_figure(summary):
    plt = figures.plt
    figure, axes = plt.subplots(figsize=(3.4, 2.6))
    for key, label, color in (("steps_to_wrong_counts", "first wrong class", "tab:orange"),
                              ("steps_counts", f"{summary['confidence']:.0%} on a wrong class", "tab:blue")):
        counts = summary.get(key) or []
        axes.step(range(len(counts)), counts, where="mid", color=color, lw=1.2, label=label)
    axes.set_xlabel("FGSM steps (gray levels)", fontsize=8)
    axes.set_ylabel("fooled images", fontsize=8)
    axes.tick_params(labelsize=8)
    axes.set_xlim(0, max(len(summary.get("steps_counts") or [1]), 2) * 0.6)
    axes.legend(fontsize=7.5)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _pairs_page(originals, adversarial, rows, gain):
    """The shown pairs at print size (7 in wide, two originals per row): original | adversarial |
    perturbation, one short title line each."""
    plt = figures.plt
    delta = ((adversarial.float() - originals.float()) * gain + 128).round().clamp(0, 255).to(torch.uint8)
    per_row = 2
    nrows = math.ceil(len(rows) / per_row)
    figure, axes = plt.subplots(nrows, 3 * per_row, figsize=(7, nrows * 1.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, row in enumerate(rows):
        r, c = divmod(i, per_row)
        psnr = f"{row['psnr']:.1f} dB" if row.get("psnr") is not None else "inf dB"
        panels = ((originals[i], row["class_name"]),
                  (adversarial[i], f"{row['predicted_name']} {row['probability']:.0%}, {row['steps']} st."),
                  (delta[i], f"L-inf {row['linf']:.0f}, {psnr}"))
        for j, (image, text) in enumerate(panels):
            ax = axes[r, 3 * c + j]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(text, fontsize=7.5, color="crimson" if j == 1 and not row["png_adversarial"] else "black")
    figure.tight_layout(pad=0.3, h_pad=0.6, w_pad=0.3)
    return figure
