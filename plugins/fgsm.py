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
The attack itself is runner.attacks.iterative_fgsm; this plugin chooses the images, checks the
delivered PNGs and reports.

Chosen images (shown, saved as PNG): the first `per_class` correctly classified test images of
each class, in test-set order, a fixed rule so reruns pick the same ones. With `attack_all`,
every correctly classified test image is attacked too, for statistics and for the transfer
spec (runner.adversarial.AdversarialSet, adversarial_set.pt).
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from runner import Plugin, figures, hookimpl, setting
from runner.adversarial import AdversarialImages, AdversarialSet, load_png, save_png
from runner.artifacts import save_figure, write_text
from runner.attacks import (
    attack_in_batches,
    distortion,
    goal_of,
    iterative_fgsm,
    perturbation_image,
    spread,
    to_uint8,
    top_switches,
)
from runner.results import finite, number_text, percent
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
        full = _attack_set(run, model, torch.nonzero(correct).flatten(), attack, settings, summary)
    else:  # the transfer spec still gets a set: the pairs
        full = AdversarialImages(pairs.images, pairs.labels, pairs.indices, pairs.success, pairs.predicted, pairs.steps)
    AdversarialSet(attacked=full, pairs=pairs, class_names=list(names), source_spec=summary["source_spec"],
                   source_run=summary["source_run"], attack=attack, test_batches=list(run.spec["data"]["test"]),
                   originals_checksum=int(images[full.indices].long().sum())).save(run.dir)
    results["headline"] = {
        "name": "fooled",
        "value": (summary["success_rate"] if settings.attack_all
                  else summary["pairs_success"] / max(summary["pairs_count"], 1)),
        "seconds": summary.get("attack_seconds"), "per_second": summary.get("attack_images_per_second")}


def _attack_pairs(run, model, chosen, attack, settings, summary) -> AdversarialImages:
    names = run.class_names
    originals, labels = run.test_images[chosen], run.test_labels[chosen]
    result = iterative_fgsm(model, originals, labels, **attack)
    adversarial = to_uint8(result.images)
    rows = _save_pngs(run.dir / "adversarial", chosen, labels, originals, adversarial, names)
    # The delivered artifact is the PNG: check that it, not the float tensor, fools the model.
    back = torch.stack([load_png(run.dir / "adversarial" / f"{r['file']}_adv.png") for r in rows]).to(run.device) \
        if rows else adversarial
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
            "psnr": finite(measured["psnr"][i], 3),
        })
    _write_csv(run.dir / "adversarial" / "pairs.csv", rows)
    summary.update({
        "pairs_count": len(rows),
        "pairs_missing_classes": [n for n in names if n not in {r["class_name"] for r in rows}],
        "pairs_success": int(result.success.sum()),
        "pairs_png_adversarial": int(still.sum()),
        "pairs_median_steps": statistics.median([r["steps"] for r in rows]) if rows else None,
        "pairs": rows,
    })
    if rows:
        save_figure(run.dir / "adversarial_pairs.png", _pairs_figure(originals.cpu(), adversarial.cpu(), rows, summary))
        _show(run, originals, adversarial)
    return AdversarialImages(adversarial, labels, chosen, result.success, back_class, steps=result.steps,
                             originals=originals)


def _save_pngs(folder, chosen, labels, originals, adversarial, names) -> list[dict]:
    """Each pair as <class>_<name>_<k>_orig.png and _adv.png (k: its rank within its class among
    the chosen); a row per pair for pairs.csv."""
    rows, rank = [], {}
    for i, (index, label) in enumerate(zip(chosen.tolist(), labels.tolist())):
        k = rank[label] = rank.get(label, -1) + 1
        stem = f"{label}_{names[label]}_{k}"
        save_png(folder / f"{stem}_orig.png", originals[i].cpu())
        save_png(folder / f"{stem}_adv.png", adversarial[i].cpu())
        rows.append({"class": label, "class_name": names[label], "k": k, "test_index": index, "file": stem})
    return rows


def _attack_set(run, model, indices, attack, settings, summary) -> AdversarialImages:
    labels, originals = run.test_labels[indices], run.test_images[indices]
    result, seconds = attack_in_batches(model, originals, labels, batch_size=settings.batch_size,
                                        name=f"{run.spec.name} attack", **attack)
    steps, success, first_wrong, images = result.steps, result.success, result.first_wrong, to_uint8(result.images)
    # Rounding to 8 bits is exact for integer eps; for any other eps this counts what survives it.
    probs = probabilities(model, images, settings.batch_size)
    kept = (goal_of(probs, labels, attack["target"]) >= attack["confidence"]) & success
    measured = distortion(images, originals)
    won = steps[success].tolist()
    attacked = len(indices)
    mean = lambda key: finite(measured[key][success].mean(), 3) if won else None
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
        **spread(measured, success, first_wrong, steps, indices, labels, probs.argmax(1), run.class_names),
    })
    save_figure(run.dir / "steps_histogram.png",
                _steps_figure(steps.tolist(), success.tolist(), attack["max_steps"], run.spec.name, summary))
    return AdversarialImages(images, labels, indices, success, probs.argmax(1), steps=steps)


# ---- outputs --------------------------------------------------------------------------------

def _write_csv(path, rows) -> None:
    buffer = io.StringIO()
    columns = ["class", "class_name", "k", "test_index", "steps", "steps_to_wrong", "success", "predicted",
               "predicted_name", "probability", "png_adversarial", "linf", "l2", "psnr", "file"]
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _pairs_figure(originals, adversarial, rows, summary):
    perturbation, gain = perturbation_image(adversarial, originals)
    cells = []
    for i, row in enumerate(rows):
        psnr = f"{row['psnr']:.1f} dB" if row["psnr"] is not None else "inf"
        cells += [(originals[i], f"{row['class_name']}\n(original)"),
                  (adversarial[i], f"-> {row['predicted_name']} {row['probability']:.1%}\n{row['steps']} steps"
                   + ("" if row["png_adversarial"] else " FAILED"), _title_colour(row)),
                  (perturbation[i], f"L-inf {row['linf']:.0f}, L2 {row['l2']:.0f}\nPSNR {psnr}")]
    figure = figures.image_grid(cells, 6, 3 * 2 * 1.45, 1.75, fontsize=6.5)  # two pairs a row
    figure.suptitle(f"Iterative FGSM, eps {summary['eps']:g} per step until a wrong class has "
                    f">= {summary['confidence']:.0%}\noriginal | adversarial (8-bit PNG; the model's class and "
                    f"probability) | perturbation x{gain:.1f} + 128", fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_size_inches()[1]))  # room for the title
    return figure


def _pairs_page(originals, adversarial, rows, gain):
    """The shown pairs at print size (7 in wide, two pairs a row): one short title line each."""
    delta = ((adversarial.float() - originals.float()) * gain + 128).round().clamp(0, 255).to(torch.uint8)
    cells = []
    for i, row in enumerate(rows):
        psnr = f"{row['psnr']:.1f} dB" if row.get("psnr") is not None else "inf dB"
        cells += [(originals[i], row["class_name"]),
                  (adversarial[i], f"{row['predicted_name']} {row['probability']:.0%}, {row['steps']} st.",
                   _title_colour(row)),
                  (delta[i], f"L-inf {row['linf']:.0f}, {psnr}")]
    figure = figures.image_grid(cells, 6, 7, 1.3, fontsize=7.5)
    figure.tight_layout(pad=0.3, h_pad=0.6, w_pad=0.3)
    return figure


def _title_colour(row) -> str:
    """An adversarial image whose PNG does not fool the model is titled in red."""
    return "black" if row["png_adversarial"] else "crimson"


def _steps_figure(steps, success, max_steps, title, summary):
    figure, axes = figures.plt.subplots(figsize=(7, 3.8))
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
    perturbation, gain = perturbation_image(adversarial.cpu(), originals.cpu())
    grid = torch.stack([originals.cpu(), adversarial.cpu(), perturbation], 1).flatten(0, 1)
    run.show_images("adversarial_pairs", grid,
                    f"original | adversarial | perturbation x{gain:.1f} + 128, {len(originals)} images")


# ---- the report ---------------------------------------------------------------------------

def switches_text(switches) -> str | None:
    """The commonest true -> reached class switches as text: "cat to dog (14.2%), ..."."""
    return ", ".join(f"{s['from']} to {s['to']} ({s['share']:.1%})" for s in switches) if switches else None


def reached_figure(run_dir: Path, title: str):
    """True class against the class the attack reached, over the fooled images of the run's
    adversarial set (None when the run kept none)."""
    if not AdversarialSet.exists(run_dir):
        return None
    saved = AdversarialSet.load(run_dir)
    fooled, classes = saved.attacked.fooled(), len(saved.class_names)
    if not len(fooled.labels):
        return None
    counts = torch.bincount(fooled.labels * classes + fooled.predicted, minlength=classes ** 2)
    return figures.confusion_matrix(counts.view(classes, classes).tolist(), saved.class_names, title,
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
        number = lambda key, form="", summary=summary: number_text(summary.get(key), form)
        blocks = [Table(
            ["attacked net (its test accuracy)", "images attacked", "fooled", "median steps (most)",
             "mean L-inf", "mean L2", "mean PSNR (dB)", "seconds"],
            [[f"{summary.get('source_spec')} ({percent(summary.get('source_test_accuracy'))})", number("attacked"),
              f"{number('succeeded')} ({percent(summary.get('success_rate'))})",
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
                      f"Steps {title} needed per fooled image: to its first wrong class, and to "
                      f"{summary['confidence']:.0%} on a wrong class, where the attack stops."))
    counts = summary.get("reached_counts")
    figure = (figures.confusion_matrix(counts, names, "", xlabel="class reached", ylabel="true class", size=(3.4, 3.0))
              if counts else reached_figure(spec.run_dir, ""))
    if figure is not None:
        drawn.append((figure, "reached", 0.5, f"Where the {summary.get('succeeded')} fooled images of {title} went: "
                                              "true class (rows) against the class reached (columns)."))
    drawn += _pairs_report_figures(spec, summary.get("pairs", []))
    blocks = []
    for figure, key, width, caption in drawn:
        path = folder / f"fgsm_{key}_{spec.name}.png"
        save_figure(path, figure)
        blocks.append(Figure(path, caption, width))
    return blocks


def _pairs_report_figures(spec, pairs: list[dict]) -> list[tuple]:
    """The shown pairs whose PNGs the run kept, in two full-width halves: (figure, key, width, caption)."""
    folder = spec.run_dir / "adversarial"
    rows = [r for r in pairs if (folder / f"{r['file']}_adv.png").is_file()]
    if not rows:
        return []
    originals = torch.stack([load_png(folder / f"{r['file']}_orig.png") for r in rows])
    adversarial = torch.stack([load_png(folder / f"{r['file']}_adv.png") for r in rows])
    gain = perturbation_image(adversarial, originals)[1]
    half = (len(rows) + 1) // 2 // 2 * 2  # an even count: both images of a class on one figure
    drawn = []
    for part, picked in enumerate((list(range(0, half)), list(range(half, len(rows)))), 1):
        if not picked:
            continue
        first, last = rows[picked[0]]["class_name"], rows[picked[-1]]["class_name"]
        drawn.append((_pairs_page(originals[picked], adversarial[picked], [rows[i] for i in picked], gain),
                      f"pairs{part}", 1.0,
                      f"Adversarial images of {spec.title}, {first} to {last} ({part} of 2): each original, its "
                      f"adversarial image (the class the net gives it, its probability, the steps taken) and the "
                      f"perturbation, amplified {gain:.1f}x around gray."))
    return drawn


def _steps_report_figure(summary):
    figure, axes = figures.plt.subplots(figsize=(3.4, 2.6))
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
