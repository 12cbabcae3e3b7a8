"""runner.adversarial: the adversarial set's typed form, its file as before, and the report's
formatting of a headline that is no fraction."""
import pytest
import torch

from runner import RunnerError
from runner.adversarial import AdversarialImages, AdversarialSet
from runner.results import finite, headline, number_text, percent


def old_dict() -> dict:
    """adversarial_set.pt as fgsm runs wrote it before AdversarialSet existed."""
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    return {"images": images, "labels": torch.tensor([1, 2, 3, 4]), "indices": torch.tensor([7, 8, 9, 10]),
            "success": torch.tensor([True, False, True, True]), "steps": torch.tensor([3, 20, 5, 1]),
            "predicted": torch.tensor([2, 2, 5, 0]), "originals_checksum": 1234, "test_batches": ["test_batch"],
            "pairs": {"images": images[:2], "originals": images[:2] + 1, "labels": torch.tensor([1, 2]),
                      "indices": torch.tensor([7, 8]), "success": torch.tensor([True, False]),
                      "predicted": torch.tensor([2, 2])},
            "class_names": [f"c{i}" for i in range(10)], "source_spec": "p1_q4_crop", "source_run": "/x/run",
            "attack": {"eps": 1.0, "max_steps": 20, "confidence": 0.99, "bound": 0.0, "target": None}}


def test_an_old_file_loads_and_saves_back_the_same_layout(tmp_path):
    torch.save(old_dict(), tmp_path / AdversarialSet.FILE)
    loaded = AdversarialSet.load(tmp_path)
    assert loaded.source_spec == "p1_q4_crop" and loaded.originals_checksum == 1234
    assert loaded.attacked.steps.tolist() == [3, 20, 5, 1] and loaded.attacked.originals is None
    assert loaded.pairs.steps is None and torch.equal(loaded.pairs.originals, old_dict()["pairs"]["originals"])
    fooled = loaded.attacked.fooled()
    assert fooled.indices.tolist() == [7, 9, 10] and fooled.predicted.tolist() == [2, 5, 0]
    loaded.save(tmp_path / "again")
    saved = torch.load(tmp_path / "again" / AdversarialSet.FILE, weights_only=True)
    want = old_dict()
    assert set(saved) == set(want) and set(saved["pairs"]) == set(want["pairs"])
    for key in ("images", "labels", "indices", "success", "steps", "predicted"):
        assert torch.equal(saved[key], want[key]), key


def test_a_missing_or_broken_set_names_the_file(tmp_path):
    with pytest.raises(RunnerError, match="has no adversarial_set.pt; is it a run of an fgsm spec"):
        AdversarialSet.load(tmp_path)
    broken = old_dict()
    del broken["pairs"]
    torch.save(broken, tmp_path / AdversarialSet.FILE)
    with pytest.raises(RunnerError, match="not a readable adversarial set.*run the attack spec again"):
        AdversarialSet.load(tmp_path)


def test_images_select_every_field_together():
    images = AdversarialImages(torch.zeros(3, 1, 1, 1), torch.tensor([0, 1, 2]), torch.tensor([5, 6, 7]),
                               torch.tensor([False, True, True]), torch.tensor([1, 1, 1]))
    assert images.where(torch.tensor([2])).indices.tolist() == [7] and images.fooled().labels.tolist() == [1, 2]


def test_numbers_as_tables_and_summaries_show_them():
    assert percent(0.66123) == "66.1%" and percent(0.5, 0) == "50%" and percent(None) == "–"
    assert number_text(1.5e-7, ".1e") == "1.5e-07" and number_text(None, ".1e") == "–"
    assert finite(float("inf")) is None and finite(float("nan"), 3) is None and finite(1.23456, 3) == 1.235
    assert finite(None) is None and finite(torch.tensor(2.5)) == 2.5


def test_a_correlation_headline_is_not_shown_as_a_percent():
    correlation = headline({"headline": {"name": "saliency-perturbation correlation", "value": 0.1792,
                                         "percent": False}})
    assert correlation.value_text() == "0.179"
    fooled = headline({"headline": {"name": "fooled", "value": 0.98}})
    assert fooled.value_text() == "98.0%" and fooled.value_text(0.5) == "50.0%"
