"""Batch transforms against exact expected tensors, and their place in the train/eval pipelines."""
import torch

from runner.plugins.augment import Normalize, PadCrop, RandomFlip
from runner.spec.loading import validate
from runner.training.builders import build_transforms


def test_normalize_uses_training_statistics_per_channel():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    images[:, 2] //= 4  # a channel with another mean and spread
    op = Normalize.fit(images)
    pixels = images.double().permute(1, 0, 2, 3).reshape(3, -1)
    torch.testing.assert_close(op.mean.flatten(), pixels.mean(1).float())
    torch.testing.assert_close(op.std.flatten(), pixels.std(1).float())
    out = op(images.float()).double().permute(1, 0, 2, 3).reshape(3, -1)
    torch.testing.assert_close(out.mean(1), torch.zeros(3, dtype=torch.double), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(1), torch.ones(3, dtype=torch.double), atol=1e-5, rtol=0)


def test_normalize_exact_values():
    op = Normalize(torch.tensor([10.0, 20.0, 30.0]), torch.tensor([2.0, 4.0, 5.0]))
    x = torch.tensor([14.0, 12.0, 40.0]).reshape(1, 3, 1, 1)
    assert op(x).flatten().tolist() == [2.0, -2.0, 2.0]


def test_flip_mirrors_whole_images_at_the_given_rate():
    torch.manual_seed(1)
    x = torch.arange(4000 * 3 * 2 * 3, dtype=torch.float).reshape(4000, 3, 2, 3)
    out = RandomFlip(0.5)(x)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # every image is exactly one or the other
    assert abs(flipped.float().mean().item() - 0.5) < 0.03  # 4,000 draws: sd 0.008
    assert bool((RandomFlip(0.0)(x) == x).all())
    assert bool((RandomFlip(1.0)(x) == x.flip(3)).all())


def test_pad_crop_returns_shifted_windows_of_the_zero_padded_image():
    torch.manual_seed(2)
    x = torch.arange(1, 1 + 500 * 2 * 8 * 8, dtype=torch.float).reshape(500, 2, 8, 8)
    out = PadCrop(pad=2)(x)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(x)):  # test-side loop only: find which window each image is
        matches = [(top, left) for top in range(5) for left in range(5)
                   if torch.equal(out[i], padded[i, :, top:top + 8, left:left + 8])]
        assert matches, f"image {i} is not a window of its padded self"
        shifts.add(matches[0])
    assert shifts == {(top, left) for top in range(5) for left in range(5)}  # all 25 offsets occur, none outside


def test_pad_crop_padding_is_zero_after_normalization():
    x = torch.full((1, 1, 4, 4), 7.0)
    torch.manual_seed(0)
    out = PadCrop(pad=4)(x)
    assert set(out.unique().tolist()) <= {0.0, 7.0}


def test_eval_pipeline_drops_train_only_ops_and_keeps_order(catalogue):
    table = {"model": {"name": "table1"}, "data": {"transforms": ["flip", "normalize", "pad_crop"]}}
    spec = validate("inline.toml", table, catalogue)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    train, evaluate = build_transforms(spec, catalogue, images)
    assert [type(m).__name__ for m in train] == ["RandomFlip", "Normalize", "PadCrop"]
    assert [type(m).__name__ for m in evaluate] == ["Normalize"]
    assert train[1] is evaluate[0]  # one set of statistics for both
