"""The adversarial images an attack run keeps for the specs that study them: its adversarial set
(adversarial_set.pt, what the fgsm plugin writes and the transfer and saliency plugins read) and
its shown images as 8-bit PNG files.

On disk the set is a plain dict of tensors, lists and numbers (torch.load's weights_only reads
it, and runs written before this class existed hold the same dict); AdversarialSet is its typed
form.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..artifacts import atomic_path, save_torch
from ..errors import RunnerError


@dataclass
class AdversarialImages:
    """Attacked test images, one entry per image (tensors of equal length)."""

    images: torch.Tensor     # uint8 (N, C, H, W): the adversarial image, or the attack's last iterate
    labels: torch.Tensor     # int64: the true class
    indices: torch.Tensor    # int64: the original's place in the test set
    success: torch.Tensor    # bool: the attack met its goal on the attacked model
    predicted: torch.Tensor  # int64: the attacked model's class for the image
    steps: torch.Tensor | None = None      # int64: attack steps taken
    originals: torch.Tensor | None = None  # uint8: the unperturbed images (the shown pairs only)

    def where(self, keep: torch.Tensor) -> AdversarialImages:
        """The images selected by a mask or index tensor."""
        selected: dict[str, Any] = {name: None if value is None else value[keep] for name, value in vars(self).items()}
        return AdversarialImages(**selected)

    def fooled(self) -> AdversarialImages:
        """The images on which the attack succeeded."""
        return self.where(self.success)

    def to_dict(self) -> dict:
        return {name: value.cpu() for name, value in vars(self).items() if value is not None}

    @classmethod
    def from_dict(cls, saved: dict) -> AdversarialImages:
        tensors: dict[str, Any] = {f.name: saved.get(f.name) for f in fields(cls)}
        return cls(**tensors)


@dataclass
class AdversarialSet:
    """An attack run's adversarial images: every attacked image (`attacked`) and the shown pairs
    (`pairs`, with their originals), and where they come from."""

    FILE: ClassVar[str] = "adversarial_set.pt"

    attacked: AdversarialImages  # every image attacked (the pairs, when the run attacked only those)
    pairs: AdversarialImages     # the images shown side by side with their originals
    class_names: list[str]
    source_spec: str             # the attacked model's spec and run folder
    source_run: str
    attack: dict                 # the attack's settings (eps, max_steps, confidence, bound, target)
    test_batches: list[str]      # the test set the originals come from (its data.test)
    # The sum of the attacked originals' pixels: a reader checks it holds the same test images.
    originals_checksum: int

    def to_dict(self) -> dict:
        """The file's layout: the attacked images' fields at the top level, the pairs under "pairs"."""
        return {**self.attacked.to_dict(), "originals_checksum": self.originals_checksum,
                "test_batches": list(self.test_batches), "pairs": self.pairs.to_dict(),
                "class_names": list(self.class_names), "source_spec": self.source_spec,
                "source_run": self.source_run, "attack": dict(self.attack)}

    @classmethod
    def from_dict(cls, saved: dict) -> AdversarialSet:
        return cls(attacked=AdversarialImages.from_dict(saved), pairs=AdversarialImages.from_dict(saved["pairs"]),
                   class_names=list(saved["class_names"]), source_spec=saved["source_spec"],
                   source_run=saved["source_run"], attack=dict(saved.get("attack") or {}),
                   test_batches=list(saved["test_batches"]), originals_checksum=int(saved["originals_checksum"]))

    def save(self, run_dir) -> Path:
        path = Path(run_dir) / self.FILE
        save_torch(path, self.to_dict())
        return path

    @classmethod
    def exists(cls, run_dir) -> bool:
        return (Path(run_dir) / cls.FILE).is_file()

    @classmethod
    def load(cls, run_dir, device="cpu") -> AdversarialSet:
        """The set of the attack run in `run_dir`, its tensors on `device`."""
        path = Path(run_dir) / cls.FILE
        if not path.is_file():
            raise RunnerError(f"{run_dir} has no {cls.FILE}; is it a run of an fgsm spec?")
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
            return cls.from_dict(saved)
        except (KeyError, TypeError, RuntimeError, EOFError) as exc:
            raise RunnerError(f"{path} is not a readable adversarial set ({type(exc).__name__}: {exc}); "
                              f"run the attack spec again") from None

    @classmethod
    def for_run(cls, run_dir, run) -> AdversarialSet:
        """The set of the attack run in `run_dir`, on `run`'s device, checked to hold `run`'s test
        images (the unperturbed images are read from its test set)."""
        loaded = cls.load(run_dir, run.device)
        indices = loaded.attacked.indices
        same = (loaded.test_batches == list(run.spec["data"]["test"])
                and (len(indices) == 0 or int(indices.max()) < len(run.test_images))
                and int(run.test_images[indices].long().sum()) == loaded.originals_checksum)
        if not same:
            raise RunnerError(f"{run.spec.name}'s test images are not those {run_dir} attacked: use the same "
                              f"data.test, and --quick for both or neither")
        return loaded


# ---- 8-bit PNG files (Pillow; a 32x32 image is small enough to pass through Python lists) -----

def save_png(path, image_uint8: torch.Tensor) -> None:
    """A (3, H, W) uint8 image as an RGB PNG file, written atomically."""
    from PIL import Image

    c, h, w = image_uint8.shape
    data = bytes(image_uint8.permute(1, 2, 0).contiguous().flatten().tolist())
    with atomic_path(path) as tmp:
        Image.frombytes("RGB", (w, h), data).save(tmp, format="PNG")


def load_png(path) -> torch.Tensor:
    """A PNG file as a (3, H, W) uint8 image."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        w, h = rgb.size
        flat = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return flat.reshape(h, w, 3).permute(2, 0, 1).contiguous()
