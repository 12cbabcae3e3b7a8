"""A universal adversarial perturbation (after Moosavi-Dezfooli et al. 2016, arXiv 1610.08401).

One perturbation v with ||v||_inf <= radius (pixel units 0-255), learned on training images,
that changes the source model's class for as many images as possible. Their loop visits the
training images one at a time and, for each image x + v does not fool yet, adds the smallest
perturbation (DeepFool) that does, projecting v back onto the ball. This plugin keeps the loop
(only images not yet fooled push v, projection after every update, stop once the training
fooling rate reaches `stop_at`) but batches it: the update is a sign-gradient step of the summed
loss of the not-yet-fooled images of a batch, so the whole training set runs on the device
without per-image Python work.

Reported on the test set, as in the paper: the fooling rate, the fraction of images whose
predicted class changes when v is added, for the source net and for every net in `targets`
(transfer), beside the fooling rate of random noise with the same L-inf norm (uniform signs), a
baseline that shows the effect is not the norm alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from runner import Plugin, figures, hookimpl, setting
from runner.artifacts import save_figure, save_torch
from runner.input_grad import input_gradients
from runner.results import percent
from runner.sources import completed_runs, probabilities, trained_model


@dataclass(frozen=True)
class Settings:
    source: str = setting("p1_q4_crop", "spec whose latest completed run (same --out, same --quick) is attacked",
                          reads="model")
    radius: float = setting(10.0, "L-inf bound of the perturbation in pixel units (0-255)", min=0.0, max=255.0)
    step: float = setting(1.0, "change of v per update, pixel units", min=0.0)
    epochs: int = setting(10, "passes over the training images at most", min=1, quick=2)
    stop_at: float = setting(0.8, "stop once this fraction of training images is fooled (the paper's 1 - delta)",
                             min=0.0, max=1.0)
    batch_size: int = setting(250, "training images per update", min=1)
    targets: list[str] = setting([], "other model specs whose test fooling rate is measured too (missing runs "
                                 "are listed)", reads="model")


# The attacked model (the trained model of the spec `source` names) is this run's model.
plugin = Plugin(settings=Settings, run_model="source",
                help="one universal perturbation that fools most images (Moosavi-Dezfooli et al.)")

FILE = "universal_perturbation.pt"


def fit_universal(model, images, *, radius: float, step: float, epochs: int, stop_at: float,
                  batch_size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[float]]:
    """v of shape (1, C, H, W) and the training fooling rate after each epoch.

    `images` are uint8 or float pixel values 0-255; the model takes such values. Labels are not
    needed: an image is fooled when its class differs from the model's class for it unperturbed.
    """
    model.eval()
    clean = probabilities(model, images, batch_size).argmax(1)
    v = torch.zeros(1, *images.shape[1:], device=images.device)
    history = []
    # Eval mode, frozen weights and runner.input_grad's cheaper backward passes (autograd's bits).
    with input_gradients(model):
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator, device="cpu").to(images.device)
            for start in range(0, len(images), batch_size):
                index = order[start:start + batch_size]
                perturbation = v.clone().requires_grad_(True)
                with torch.enable_grad():
                    logits = model(_add(images[index], perturbation))
                    not_fooled = logits.argmax(1) == clean[index]
                    if not not_fooled.any():
                        continue
                    # Push away from the clean class, only for images v does not fool yet (the paper's rule).
                    loss = F.cross_entropy(logits[not_fooled], clean[index][not_fooled], reduction="sum")
                    (grad,) = torch.autograd.grad(loss, perturbation)
                v = (v + step * grad.sign()).clamp(-radius, radius)
            history.append(fooling_rate(model, images, v, clean, batch_size))
            if history[-1] >= stop_at:
                break
    return v.detach(), history


def fooling_rate(model, images, v, clean=None, batch_size: int = 1000) -> float:
    """Fraction of images whose class changes when v is added (pixels clamped to 0-255)."""
    if clean is None:
        clean = probabilities(model, images, batch_size).argmax(1)
    perturbed = probabilities(model, _add(images, v), batch_size).argmax(1)
    return float((perturbed != clean).float().mean())


def random_sign_noise(like: torch.Tensor, radius: float, generator: torch.Generator | None = None) -> torch.Tensor:
    signs = torch.randint(0, 2, like.shape, generator=generator, device="cpu").to(like.device) * 2 - 1
    return signs.float() * radius


# ---- hooks ----------------------------------------------------------------------------------

@hookimpl
def run_finished(run, results, settings):
    summary = results.setdefault("universal", {})
    summary["source_spec"], summary["source_run"] = results["model_source"]["spec"], results["model_source"]["run"]
    generator = torch.Generator().manual_seed(run.spec["seed"])
    started = time.perf_counter()
    v, history = fit_universal(run.model, run.train_images, radius=settings.radius, step=settings.step,
                               epochs=settings.epochs, stop_at=settings.stop_at,
                               batch_size=settings.batch_size, generator=generator)
    seconds = time.perf_counter() - started
    noise = random_sign_noise(v, settings.radius, generator)
    models = {settings.source: run.model}
    skipped = []
    for name, found in completed_runs(run, settings.targets, skipped):
        if name not in models:
            models[name] = trained_model(run, found)
    test = {}
    for name, model in models.items():
        # One pass per input set and model: clean, with v, with noise.
        clean, with_v, with_noise = (probabilities(model, x).argmax(1) for x in (
            run.test_images.float(), _add(run.test_images, v), _add(run.test_images, noise)))
        labels = run.test_labels
        test[name] = {"fooling_rate": _mean(with_v != clean), "random_noise_fooling_rate": _mean(with_noise != clean),
                      "clean_accuracy": _mean(clean == labels), "perturbed_accuracy": _mean(with_v == labels)}
    summary.update({
        "radius": settings.radius, "linf": round(float(v.abs().max()), 3),
        "train_images": len(run.train_images), "epochs_run": len(history),
        "train_fooling_rate_by_epoch": [round(r, 5) for r in history],
        "seconds": round(seconds, 3),
        "source_test_fooling_rate": test[settings.source]["fooling_rate"],
        "test": test, "skipped": skipped,
    })
    results["headline"] = {"name": "fooling rate", "value": summary["source_test_fooling_rate"],
                           "seconds": summary["seconds"]}
    save_torch(run.dir / FILE, {"perturbation": v.cpu(), "radius": settings.radius,
                                "source_spec": settings.source})
    save_figure(run.dir / "universal_perturbation.png",
                _figure(v, run.test_images[:6], models[settings.source], run.class_names, summary))


def _add(images, v) -> torch.Tensor:
    return (images.float() + v).clamp(0.0, 255.0)


def _mean(mask) -> float:
    return round(float(mask.float().mean()), 5)


def _figure(v, examples, model, names, summary):
    plt = figures.plt
    figure = plt.figure(figsize=(10, 5.2))
    top = figure.subfigures(2, 1, height_ratios=[1, 1.1])
    axes = top[0].subplots(1, len(examples) + 1)
    shown = ((v[0] / (2 * max(summary["radius"], 1e-9)) + 0.5).clamp(0, 1)).permute(1, 2, 0).cpu().numpy()
    axes[0].imshow(shown, interpolation="nearest")
    axes[0].set_title(f"v (L-inf {summary['linf']:g},\nshown x{127.5 / max(summary['radius'], 1e-9):.0f})",
                      fontsize=7)
    perturbed = _add(examples, v)
    classes = probabilities(model, perturbed).argmax(1)
    clean = probabilities(model, examples).argmax(1)
    for ax, image, was, now in zip(axes[1:], perturbed, clean, classes):
        ax.imshow((image / 255).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_title(f"{names[int(was)]} -> {names[int(now)]}", fontsize=7,
                     color="crimson" if int(was) != int(now) else "black")
    for ax in axes:
        ax.axis("off")
    bars = top[1].subplots()
    names_ = list(summary["test"])
    x = torch.arange(len(names_)).numpy()
    bars.bar(x - 0.2, [summary["test"][n]["fooling_rate"] for n in names_], 0.4, label="universal v")
    bars.bar(x + 0.2, [summary["test"][n]["random_noise_fooling_rate"] for n in names_], 0.4,
             label="random signs, same L-inf", color="tab:gray")
    bars.set_xticks(x, names_, rotation=15, fontsize=7)
    bars.set(ylabel="test fooling rate", ylim=(0, 1),
             title=f"one perturbation made on {summary['source_spec']}: fooling rate on the test set")
    bars.legend(fontsize=7)
    bars.grid(axis="y", alpha=0.3)
    return figure


# ---- the report ---------------------------------------------------------------------------

@hookimpl
def report_sections(runs, specs):
    """Each universal perturbation's fooling rates as a table, and its figure."""
    from runner.report import Figure, Section, Table

    sections = []
    for spec in specs:
        summary = spec.representative.get("universal") or {}
        if not summary.get("test"):
            continue
        rows = [[name, percent(cell["fooling_rate"]), percent(cell["random_noise_fooling_rate"]),
                 f"{percent(cell['clean_accuracy'])} to {percent(cell['perturbed_accuracy'])}"]
                for name, cell in summary["test"].items()]
        source = summary.get("source_spec", spec.spec.get("plugins", {}).get("universal", {}).get("source"))
        blocks = [Table(["evaluated net", "fooling rate of v", "of random signs, same L-inf",
                         "accuracy: clean to with v"],
                        rows, f"One perturbation v (L-inf {summary.get('linf', 0):g} gray levels) made on {source}, "
                              "added to every test image; fooling rate: the share of test images whose class changes.")]
        if path := spec.figure("universal_perturbation.png"):
            blocks.append(Figure(path, f"The universal perturbation, images with it added, and its fooling rates "
                                       f"({spec.name}).", 0.8))
        sections.append(Section(spec=spec.name, blocks=blocks))
    return sections
