"""Where the net looks and where the attack pushes: input-gradient saliency and Grad-CAM of the
attacked images, beside their adversarial perturbations.

The run's model is the attacked one (`source`, its declared run_model: the spec trains nothing),
and the images are those an attack spec's latest run perturbed (`attack`, an fgsm spec; its
adversarial_set.pt holds the adversarial images, the test indices of their originals and the
shown pairs). For each original image x of true class y, through runner.input_grad:

- saliency: |dJ(x, y)/dx| summed over the three colour channels, J the cross-entropy the attack
  ascends (Simonyan et al. 2014 take the class score; the loss is what FGSM follows);
- Grad-CAM (Selvaraju et al. 2017) on the last conv layer's output A: ReLU(sum_k a_k A_k) with
  a_k the spatial mean of d(logit_y)/dA_k, upsampled bilinearly to the image;
- |perturbation|: |adversarial - original| summed over the channels.

summary.json `saliency`: the Pearson correlation over the 32x32 pixels between saliency and
|perturbation| per shown image, and its mean and median over every successful adversarial image
of the set, beside a control: the same correlation with another image's perturbation (each
saliency map paired with the next image's), which says how much of it is the images' shared
layout rather than the attack following the gradient; the same for Grad-CAM. saliency.png shows,
per shown image, original, |saliency|, Grad-CAM, perturbation and adversarial image.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runner import Plugin, RunnerError, figures, hookimpl, setting
from runner.adversarial import AdversarialImages, AdversarialSet
from runner.artifacts import save_figure
from runner.attacks import perturbation_image
from runner.input_grad import input_gradients
from runner.results import finite, number_text
from runner.sources import require_run


@dataclass(frozen=True)
class Settings:
    attack: str = setting("p3_q1_fgsm", f"attack spec whose latest completed run's {AdversarialSet.FILE} is explained",
                          reads="run")
    source: str = setting("p1_q4_crop", "the spec the attack attacked, whose trained model is explained",
                          reads="model")
    per_class: int = setting(1, "shown images per class (the attack's first shown pairs of each class)", min=0,
                             max=2)
    whole_set: bool = setting(True, "also correlate over every successful adversarial image of the set")
    batch_size: int = setting(500, "images per forward and backward pass", min=1)


plugin = Plugin(settings=Settings, run_model="source",
                help="input-gradient saliency and Grad-CAM of attacked images beside their perturbations")


# ---- the maps -----------------------------------------------------------------------------

def last_conv(model: nn.Module) -> tuple[str, nn.Module]:
    """The model's last convolution (in registration order, which for a Sequential is forward order)."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not found:
        raise RunnerError("saliency: the model has no convolution for Grad-CAM")
    return found[-1]


def maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: nn.Module,
         batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(saliency, Grad-CAM), each (N, H, W) float: |dJ/dx| summed over channels, and the Grad-CAM
    of the true class on `layer`'s output, upsampled to the image size."""
    saliency, cams = [], []
    captured = {}
    handle = layer.register_forward_hook(lambda module, args, output: captured.__setitem__("a", output))
    try:
        with input_gradients(model), torch.enable_grad():
            for start in range(0, len(images), batch_size):
                x = images[start:start + batch_size].float().requires_grad_(True)
                y = labels[start:start + batch_size]
                logits = model(x)
                activation = captured.pop("a")
                loss = F.cross_entropy(logits.float(), y, reduction="sum")  # summed: each image its own gradient
                (grad_x,) = torch.autograd.grad(loss, x, retain_graph=True)
                (grad_a,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), activation)
                saliency.append(grad_x.abs().sum(1))
                cam = F.relu((grad_a.mean((2, 3), keepdim=True) * activation.detach()).sum(1, keepdim=True))
                cams.append(F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0])
    finally:
        handle.remove()
    empty = images.new_zeros((0, *images.shape[-2:]), dtype=torch.float)
    return torch.cat([empty, *saliency]), torch.cat([empty, *cams])


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of maps (N, H, W) over their pixels; NaN where one is flat."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).float()


def perturbation_size(adversarial, originals) -> torch.Tensor:
    return (adversarial.float() - originals.float()).abs().sum(1)


# ---- the attack's set ---------------------------------------------------------------------

def load_set(attack_dir, run, source: str) -> AdversarialSet:
    """The attack run's adversarial set, checked to hold this run's test images and to have been
    made on this run's model."""
    saved = AdversarialSet.for_run(attack_dir, run)
    if saved.source_spec != source:
        raise RunnerError(f"{attack_dir} attacked {saved.source_spec}, not {source}: set "
                          f"plugins.saliency.source = \"{saved.source_spec}\" in {run.spec.name}'s spec")
    return saved


def shown_pairs(pairs: AdversarialImages, per_class: int) -> torch.Tensor:
    """Positions in the attack's shown pairs: the first `per_class` successful ones of each class."""
    chosen, count = [], {}
    for i, (label, ok) in enumerate(zip(pairs.labels.tolist(), pairs.success.tolist())):
        if ok and count.get(label, 0) < per_class:
            count[label] = count.get(label, 0) + 1
            chosen.append(i)
    return torch.tensor(chosen, dtype=torch.long)


# ---- hooks --------------------------------------------------------------------------------

@hookimpl
def run_finished(run, results, settings):
    started = time.perf_counter()
    attack_dir = require_run(run, settings.attack, "adversarial images")
    saved = load_set(attack_dir, run, settings.source)
    model = run.model.eval()
    layer_name, layer = last_conv(model)
    names = saved.class_names
    summary = results["saliency"] = {
        "attack_spec": settings.attack, "attack_run": str(attack_dir),
        "source_spec": results["model_source"]["spec"], "source_run": results["model_source"]["run"],
        "gradcam_layer": layer_name,
    }

    pairs = saved.pairs
    chosen = shown_pairs(pairs, settings.per_class).to(run.device)
    originals, adversarial, labels = pairs.originals[chosen], pairs.images[chosen], pairs.labels[chosen]
    saliency, cam = maps(model, originals, labels, layer, settings.batch_size)
    size = perturbation_size(adversarial, originals)
    shown_r, shown_cam_r = correlation(saliency, size), correlation(cam, size)
    summary["shown"] = [
        {"test_index": int(pairs.indices[i]), "class": names[int(pairs.labels[i])],
         "reached": names[int(pairs.predicted[i])], "saliency_r": finite(r, 4), "gradcam_r": finite(c, 4)}
        for i, r, c in zip(chosen.tolist(), shown_r.tolist(), shown_cam_r.tolist())]
    summary["shown_mean_r"] = _mean(shown_r)

    if settings.whole_set:
        fooled = saved.attacked.fooled()
        set_originals = run.test_images[fooled.indices]
        set_saliency, set_cam = maps(model, set_originals, fooled.labels, layer, settings.batch_size)
        set_size = perturbation_size(fooled.images, set_originals)
        other = set_size.roll(1, 0)  # another image's perturbation: the control
        summary.update({
            "set_n": len(fooled.labels),
            "set_mean_r": _mean(correlation(set_saliency, set_size)),
            "set_median_r": _median(correlation(set_saliency, set_size)),
            "set_control_mean_r": _mean(correlation(set_saliency, other)) if len(other) > 1 else None,
            "gradcam_set_mean_r": _mean(correlation(set_cam, set_size)),
            "gradcam_set_control_mean_r": _mean(correlation(set_cam, other)) if len(other) > 1 else None,
        })
    summary["seconds"] = round(time.perf_counter() - started, 3)
    # A correlation, not a fraction: reports show it as a number, not a percent.
    results["headline"] = {"name": "saliency-perturbation correlation", "percent": False,
                           "value": summary.get("set_mean_r", summary["shown_mean_r"]), "seconds": summary["seconds"]}
    if len(chosen):
        rows = [f"{s['class']}\nr={_text(s['saliency_r'])}" for s in summary["shown"]]
        save_figure(run.dir / "saliency.png",
                    maps_figure(originals.cpu(), saliency.cpu(), cam.cpu(), adversarial.cpu(), rows))
        run.show_images("saliency", torch.cat([originals.cpu(), _gray(saliency.cpu()), _gray(size.cpu()),
                                               adversarial.cpu()]),
                        "originals | |saliency| | |perturbation| | adversarial")


def _mean(values: torch.Tensor) -> float | None:
    kept = [v for v in values.tolist() if math.isfinite(v)]
    return round(statistics.fmean(kept), 4) if kept else None


def _median(values: torch.Tensor) -> float | None:
    kept = [v for v in values.tolist() if math.isfinite(v)]
    return round(statistics.median(kept), 4) if kept else None


def _text(value) -> str:
    return number_text(value, ".2f")


def _scaled(maps_: torch.Tensor) -> torch.Tensor:
    """Each map scaled to 0..1 by its own maximum."""
    peak = maps_.flatten(1).amax(1).clamp(min=1e-12)
    return maps_ / peak[:, None, None]


def _gray(maps_: torch.Tensor) -> torch.Tensor:
    return (_scaled(maps_) * 255).round().to(torch.uint8)[:, None].expand(-1, 3, -1, -1)


# ---- figures and the report ---------------------------------------------------------------

def maps_figure(originals, saliency, cam, adversarial, titles, size_per_image=0.7):
    """Columns: the shown images; rows: original, |saliency|, Grad-CAM over the image, perturbation
    (amplified around gray, one gain for all), adversarial."""
    plt = figures.plt
    n = len(originals)
    perturbation, gain = perturbation_image(adversarial, originals)
    rows = (("original", lambda i, ax: ax.imshow(originals[i].permute(1, 2, 0).numpy(), interpolation="nearest")),
            ("|saliency|", lambda i, ax: ax.imshow(_scaled(saliency)[i].numpy(), cmap="magma",
                                                   interpolation="nearest")),
            ("Grad-CAM", lambda i, ax: (ax.imshow(originals[i].permute(1, 2, 0).numpy(), interpolation="nearest"),
                                        ax.imshow(_scaled(cam)[i].numpy(), cmap="jet", alpha=0.45))),
            (f"perturbation\nx{gain:.1f}", lambda i, ax: ax.imshow(perturbation[i].permute(1, 2, 0).numpy(),
                                                                       interpolation="nearest")),
            ("adversarial", lambda i, ax: ax.imshow(adversarial[i].permute(1, 2, 0).numpy(), interpolation="nearest")))
    figure, axes = plt.subplots(len(rows), n, figsize=(max(n, 2) * size_per_image + 0.9, len(rows) * size_per_image
                                                        + 0.5), squeeze=False)
    for r, (label, draw) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            draw(i, ax)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[i], fontsize=6)
        axes[r, 0].set_ylabel(label, fontsize=6.5)
    figure.tight_layout(pad=0.3)
    return figure


@hookimpl
def report_sections(runs, specs):
    """Each saliency spec's figure and its correlations beside the control's."""
    from runner.report import Figure, Paragraph, Section

    sections = []
    for spec in specs:
        summary = spec.representative.get("saliency")
        if not summary:
            continue
        blocks = []
        if summary.get("set_n"):
            blocks.append(Paragraph(
                f"Over the {summary['set_n']} successful adversarial images of {summary['attack_spec']}, the "
                f"input-gradient saliency of {summary['source_spec']} correlates with the size of the perturbation at "
                f"r = {_text(summary.get('set_mean_r'))} on average (median {_text(summary.get('set_median_r'))}; "
                f"with another image's perturbation {_text(summary.get('set_control_mean_r'))}). Grad-CAM on the "
                f"last conv layer (module {summary['gradcam_layer']}): r = {_text(summary.get('gradcam_set_mean_r'))} "
                f"(control {_text(summary.get('gradcam_set_control_mean_r'))})."))
        else:
            blocks.append(Paragraph(f"No attacked image of {summary['attack_spec']} became adversarial, so there "
                                    "are no perturbations to compare the saliency with."))
        if path := spec.figure("saliency.png"):
            blocks.append(Figure(path, f"For {spec.title}: each shown original, |dJ/dx| summed over channels (r: its "
                                       "correlation with the perturbation's size), Grad-CAM of the true class, the "
                                       "perturbation and the adversarial image.", 1.0))
        if blocks:
            sections.append(Section(spec=spec.name, blocks=blocks, fields={"saliency": summary}))
    return sections
