"""Part 3 Q2: feed adversarial images made on one model to another (cross-model transfer).

The run's model is the trained model of `target` (its declared run_model: the spec names no model and
trains nothing); run_finished reads the `attack` run's adversarial_set.pt and reports the
target's accuracy on

- the 20 shown adversarial images (the homework's number) and
- every successful adversarial image of the set,

each beside its accuracy on the same images unperturbed, with 95% Wilson intervals. Optionally a
matrix: each attack spec in `matrix_sources` x each model spec in `matrix_targets`, the target's
accuracy on that attack's adversarial images (runs that do not exist are listed, not fatal).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from runner import Plugin, figures, hookimpl, setting
from runner.adversarial import AdversarialImages, AdversarialSet
from runner.artifacts import save_figure
from runner.results import percent
from runner.sources import completed_runs, probabilities, require_run, trained_model


@dataclass(frozen=True)
class Settings:
    attack: str = setting("p3_q1_fgsm", f"attack spec whose latest completed run's {AdversarialSet.FILE} is used",
                          reads="run")
    target: str = setting("p2_q1_allconv", "spec whose latest completed run's trained model is evaluated",
                          reads="model")
    matrix_sources: list[str] = setting([], "attack specs for the transfer matrix (rows)", reads="run")
    matrix_targets: list[str] = setting([], "model specs for the transfer matrix (columns)", reads="model")
    batch_size: int = setting(1000, "images evaluated at once", min=1)


# The evaluated model (the trained model of the spec `target` names) is this run's model.
plugin = Plugin(settings=Settings, run_model="target",
                help="how adversarial images made on one net fool another (P3 Q2)")

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n is 0 (nothing known).

    Unlike the normal approximation it stays inside [0, 1] and is sound at 0/20 or 20/20, which
    is where adversarial accuracies sit.
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    scale = 1 + z * z / n
    center = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return max(0.0, center - half), min(1.0, center + half)


def proportion(successes: int, n: int) -> dict:
    low, high = wilson_interval(successes, n)
    return {"correct": successes, "n": n, "accuracy": round(successes / n, 5) if n else None,
            "ci95": [round(low, 5), round(high, 5)]}


def evaluate(model, adversarial: AdversarialImages, originals, batch_size: int) -> dict:
    """Accuracy of `model` on adversarial images and on the same images unperturbed."""
    labels = adversarial.labels
    adv_class = probabilities(model, adversarial.images, batch_size).argmax(1)
    clean_class = probabilities(model, originals, batch_size).argmax(1)
    # Fooled into the same wrong class as the attacked model: the perturbation carries its meaning.
    same_wrong = (adv_class == adversarial.predicted) & (adv_class != labels)
    return {"adversarial": proportion(int((adv_class == labels).sum()), len(labels)),
            "clean": proportion(int((clean_class == labels).sum()), len(labels)),
            "same_wrong_class": int(same_wrong.sum()), "predicted": adv_class}


# ---- hooks ----------------------------------------------------------------------------------

@hookimpl
def run_finished(run, results, settings):
    attack_dir = require_run(run, settings.attack, "adversarial images")
    summary = results.setdefault("transfer", {})
    summary.update({"target_spec": results["model_source"]["spec"], "target_run": results["model_source"]["run"],
                    "attack_spec": settings.attack, "attack_run": str(attack_dir)})
    model = run.model.eval()
    adversarial = AdversarialSet.for_run(attack_dir, run)
    summary["source_spec"], summary["source_run"] = adversarial.source_spec, adversarial.source_run
    batch = settings.batch_size

    pairs = adversarial.pairs
    shown = evaluate(model, pairs, pairs.originals, batch)
    full = adversarial.attacked.fooled()
    rest = evaluate(model, full, run.test_images[full.indices], batch)
    summary.update({
        # Flat keys for the report's placeholders; details below.
        "adv_accuracy": shown["adversarial"]["accuracy"], "adv_ci95": shown["adversarial"]["ci95"],
        "clean_accuracy": shown["clean"]["accuracy"], "clean_ci95": shown["clean"]["ci95"],
        "pairs_n": len(pairs.labels), "pairs_adversarial_on_source": int(pairs.success.sum()),
        "pairs_same_wrong_class": shown["same_wrong_class"],
        "set_adv_accuracy": rest["adversarial"]["accuracy"], "set_adv_ci95": rest["adversarial"]["ci95"],
        "set_clean_accuracy": rest["clean"]["accuracy"], "set_clean_ci95": rest["clean"]["ci95"],
        "set_n": len(full.labels),
        "set_same_wrong_class_rate": _rate(rest["same_wrong_class"], len(full.labels)),
        "pairs": {"adversarial": shown["adversarial"], "clean": shown["clean"]},
        "set": {"adversarial": rest["adversarial"], "clean": rest["clean"]},
    })
    results["headline"] = {"name": "target's accuracy on adversarial", "value": summary["set_adv_accuracy"]}
    save_figure(run.dir / "transfer_accuracy.png", _accuracy_figure(summary, run.spec.name))
    if len(pairs.labels):
        save_figure(run.dir / "transfer_pairs.png",
                    _pairs_figure(pairs, shown["predicted"], adversarial.class_names, summary))
    if settings.matrix_sources and settings.matrix_targets:
        summary["matrix"] = _matrix(run, settings)
        if summary["matrix"]["sources"] and summary["matrix"]["targets"]:
            save_figure(run.dir / "transfer_matrix.png", _matrix_figure(summary["matrix"]))


def _rate(count: int, n: int) -> float | None:
    return round(count / n, 5) if n else None


def _matrix(run, settings) -> dict:
    """Target accuracy on each attack's successful adversarial images; missing runs are listed."""
    skipped = []
    sets = {}
    for name, found in completed_runs(run, settings.matrix_sources, skipped, "attack "):
        adversarial = AdversarialSet.for_run(found, run)
        sets[name] = (found, adversarial.attacked.fooled(), adversarial.source_spec)
    models = {name: (found, trained_model(run, found))
              for name, found in completed_runs(run, settings.matrix_targets, skipped, "model ")}
    accuracy, clean, ci = [], [], []
    for _, images, _ in sets.values():
        originals = run.test_images[images.indices]
        row = [evaluate(model, images, originals, settings.batch_size) for _, model in models.values()]
        accuracy.append([cell["adversarial"]["accuracy"] for cell in row])
        ci.append([cell["adversarial"]["ci95"] for cell in row])
        clean.append([cell["clean"]["accuracy"] for cell in row])
    return {"sources": list(sets), "source_models": [sets[name][2] for name in sets],
            "source_runs": [str(sets[name][0]) for name in sets],
            "n": [len(sets[name][1].labels) for name in sets],
            "targets": list(models), "target_runs": [str(found) for found, _ in models.values()],
            "accuracy": accuracy, "ci95": ci, "clean_accuracy": clean, "skipped": skipped}


# ---- figures --------------------------------------------------------------------------------

def _accuracy_figure(summary, title):
    plt = figures.plt
    # Drawn at print size: half a page's width, 8-point text.
    figure, axes = plt.subplots(figsize=(3.4, 2.8))
    groups = [(f"{summary['pairs_n']} shown", summary["pairs"]), (f"all {summary['set_n']}", summary["set"])]
    for g, (_, block) in enumerate(groups):
        for k, (kind, color) in enumerate((("clean", "tab:gray"), ("adversarial", "tab:red"))):
            cell = block[kind]
            if cell["accuracy"] is None:
                continue
            x = g + (k - 0.5) * 0.36
            axes.bar(x, cell["accuracy"], width=0.34, color=color, label=kind if g == 0 else None)
            axes.errorbar(x, cell["accuracy"], yerr=[[cell["accuracy"] - cell["ci95"][0]],
                                                     [cell["ci95"][1] - cell["accuracy"]]], color="k", capsize=4)
            axes.text(x, cell["ci95"][1] + 0.02, f"{cell['accuracy']:.0%}", ha="center", fontsize=8)
    axes.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=8)
    axes.tick_params(labelsize=8)
    axes.set_ylabel(f"accuracy of {summary['target_spec']}", fontsize=8)
    axes.set_ylim(0, 1.15)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    axes.grid(axis="y", alpha=0.3)
    return figure


def _pairs_figure(pairs: AdversarialImages, target_class, names, summary):
    cells = []
    for image, label, source, target in zip(pairs.images, pairs.labels.tolist(), pairs.predicted.tolist(),
                                            target_class.tolist()):
        cells.append((image, f"{names[label]}\n{names[source]}\n{names[target]}",
                      "darkgreen" if target == label else "crimson"))
    # Print size: the text width, 7-point titles.
    figure = figures.image_grid(cells, min(10, len(cells)), 7, 1.25, extra_height=0.3)
    figure.suptitle(f"true class / {summary['source_spec']}'s class / {summary['target_spec']}'s class "
                    "(green: still correct)", fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / figure.get_size_inches()[1]))
    return figure


def _matrix_figure(matrix):
    plt = figures.plt
    values = torch.tensor([[math.nan if v is None else v for v in row] for row in matrix["accuracy"]]).numpy()
    figure, axes = plt.subplots(figsize=(1.5 * len(matrix["targets"]) + 3, 0.7 * len(matrix["sources"]) + 2.2))
    image = axes.imshow(values, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not math.isnan(values[i, j]):
                axes.text(j, i, f"{values[i, j]:.0%}\n(clean {matrix['clean_accuracy'][i][j]:.0%})",
                          ha="center", va="center", fontsize=7)
    axes.set_xticks(range(len(matrix["targets"])), matrix["targets"], rotation=30, ha="right")
    rows = zip(matrix["sources"], matrix["source_models"], matrix["n"])
    axes.set_yticks(range(len(matrix["sources"])), [f"{s}\n(on {m}, n={n})" for s, m, n in rows])
    axes.set(xlabel="evaluated model", ylabel="adversarial images",
             title="accuracy on adversarial images\n(white-box where the evaluated model is the attacked one)")
    figure.colorbar(image, ax=axes, fraction=0.046)
    return figure


# ---- the report ---------------------------------------------------------------------------

def _interval(block: dict) -> str:
    low, high = block.get("ci95") or (None, None)
    return f"{percent(block.get('accuracy'))} ({percent(low)} to {percent(high)})"


@hookimpl
def report_sections(runs, specs):
    """Each transfer spec's accuracies (adversarial against the same images unperturbed, with 95%
    Wilson intervals), its transfer matrix as a table, and its figures."""
    from runner.report import Figure, Section, Table

    sections = []
    for spec in specs:
        summary = spec.representative.get("transfer") or {}
        if not summary.get("set"):
            continue
        rows = [[f"the {summary.get('pairs_n')} shown images", _interval(summary["pairs"]["adversarial"]),
                 _interval(summary["pairs"]["clean"])],
                [f"all {summary.get('set_n')} successful adversarial images", _interval(summary["set"]["adversarial"]),
                 _interval(summary["set"]["clean"])]]
        blocks = [Table(["images", "accuracy on the adversarial images (95% interval)",
                         "on the same images unperturbed"],
                        rows, f"Accuracy of {summary.get('target_spec')} on the adversarial images made on "
                              f"{summary.get('source_spec')}.")]
        matrix = summary.get("matrix") or {}
        if matrix.get("sources") and matrix.get("targets"):
            named = lambda spec_name: runs[spec_name].title if spec_name in runs else spec_name
            blocks.append(Table(
                ["adversarial images made on"] + [named(t) for t in matrix["targets"]],
                [[f"{named(model)} (n={n})"] + [percent(v) for v in row]
                 for model, n, row in zip(matrix["source_models"], matrix["n"], matrix["accuracy"])],
                "Transfer matrix: accuracy of each evaluated net (columns) on the adversarial images made on each "
                "attacked net (rows); on the attacked net itself it is 0% by construction.", small=True))
        for file_name, caption, width in (
                ("transfer_accuracy.png", "Accuracy on the adversarial images against the same images unperturbed, "
                                          "with 95% Wilson intervals", 0.5),
                ("transfer_pairs.png", "The shown adversarial images and the class the evaluated net gives them", 1.0)):
            if path := spec.figure(file_name):
                blocks.append(Figure(path, f"{caption} ({spec.title}).", width))
        sections.append(Section(spec=spec.name, blocks=blocks, fields=matrix_fields(summary, runs)))
    return sections


def _range(values) -> str:
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return percent(values[0] if values else None)
    return f"{percent(min(values))} to {percent(max(values))}"


def matrix_fields(summary: dict, runs) -> dict:
    """The transfer matrix read for the explanation template (`{spec.matrix.*}`): `forward`, the
    target's accuracy on the attack's images; `others` and `others_word`, the other nets'
    accuracies on the same images and where the target's stands among them ("lower than",
    "higher than", "within the range of"); `reverse`, the attacked net's accuracy on images made
    on the target, and `reverse_others` the other nets' on those; `direction_word`, whether
    transfer is "stronger" ("weaker", "about as strong") from the attacked net to the target than
    back; `linf_word`, whether the attack on the target moved its images "further" than the attack
    on the attacked net ("less far", "about as far"), with `linf` and `reverse_linf` (mean L-inf)."""
    matrix = summary.get("matrix") or {}
    sources, models, targets = matrix.get("sources", []), matrix.get("source_models", []), matrix.get("targets", [])
    attacked, target = summary.get("source_spec"), summary.get("target_spec")
    if summary.get("attack_spec") not in sources or target not in targets:
        return {}
    row = matrix["accuracy"][sources.index(summary["attack_spec"])]
    forward = row[targets.index(target)]
    others = [v for t, v in zip(targets, row) if t not in (target, attacked) and v is not None]
    # Every key, None where the matrix lacks its cells, so a template's paragraph is left out, not broken.
    fields = dict.fromkeys(("others_word", "reverse", "reverse_others", "direction_word", "linf", "reverse_linf",
                            "linf_word"))
    fields.update(forward=forward, others=_range(others))
    if others and forward is not None:
        fields["others_word"] = ("lower than" if forward < min(others) else "higher than" if forward > max(others)
                                 else "within the range of")
    if target in models and attacked in targets:
        back = matrix["accuracy"][models.index(target)]
        reverse = back[targets.index(attacked)]
        fields["reverse"] = reverse
        fields["reverse_others"] = _range([v for t, v in zip(targets, back) if t not in (target, attacked)])
        if reverse is not None and forward is not None:
            gap = reverse - forward  # accuracy left: lower means the images transferred better
            fields["direction_word"] = "about as strong" if abs(gap) <= 0.02 else "stronger" if gap > 0 else "weaker"
        made_on = {runs[name].representative.get("fgsm", {}).get("source_spec"): runs[name]
                   for name in sources if name in runs}
        if attacked in made_on and target in made_on:
            linf = made_on[attacked].representative["fgsm"].get("mean_linf")
            reverse_linf = made_on[target].representative["fgsm"].get("mean_linf")
            if linf and reverse_linf:
                fields.update(linf=linf, reverse_linf=reverse_linf,
                              linf_word="about as far" if abs(reverse_linf - linf) <= 0.1 * linf
                              else "further" if reverse_linf > linf else "less far")
    return {"matrix": fields}
