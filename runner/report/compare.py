"""Two specs' results compared in words, so an answer's comparative sentence follows the numbers
it compares: "higher than", "lower than", or "about the same as" when the difference is within
the noise (1 point, or 2 standard errors of the difference of the means over seeds)."""
from __future__ import annotations

import math

SAME = "about the same as"


def word(change: float, noise: float, words: tuple[str, str] = ("higher than", "lower than")) -> str:
    """A difference in words; within the noise it is "about the same as"."""
    return SAME if abs(change) <= noise else words[change < 0]


def noise(this, other, key: str = "test_accuracy") -> float:
    """The smallest difference of the two specs' means of `key` that is not noise."""
    (_, sd), (_, sd_other) = this.mean_sd(key), other.mean_sd(key)
    return max(0.01, 2 * math.sqrt((sd or 0) ** 2 / len(this.runs) + (sd_other or 0) ** 2 / len(other.runs)))


def compare(this, other) -> dict:
    """`this` spec against `other` (both SpecRuns): test_change, train_change, gap_change (fractions:
    this minus other) and their words, test_word and train_word ("higher than", "lower than", "about
    the same as") and gap_word ("wider than", "narrower than", ...) for the gap between training
    and test accuracy (the overfitting); `spec` is the other's name. Training fields are missing
    where either spec lacks a training accuracy (an attack)."""
    (test, _), (before, _) = this.mean_sd(), other.mean_sd()
    fields: dict = {"spec": other.name}
    if test is None or before is None:
        return fields
    threshold = noise(this, other)
    fields["test_change"] = test - before
    fields["test_word"] = word(fields["test_change"], threshold)
    train = this.mean_sd("final_running_train_accuracy")[0]
    train_before = other.mean_sd("final_running_train_accuracy")[0]
    if train is not None and train_before is not None:
        fields["train_change"] = train - train_before
        fields["train_word"] = word(fields["train_change"], threshold)
        fields["gap_change"] = (train - test) - (train_before - before)
        fields["gap_word"] = word(fields["gap_change"], threshold, ("wider than", "narrower than"))
    return fields
