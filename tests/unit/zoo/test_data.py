"""Dataset references to deterministic train / calibration / test splits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from farm.errors import ConfigError
from farm.zoo.data import DatasetSplits, TensorSplit, calibration_subset, first_batch, iterate, load_dataset
from farm.zoo.digits import N_CALIBRATION, N_TEST


def test_synthetic_splits_are_unlabelled_and_deterministic() -> None:
    ref = "synthetic:3x4x5?n_test=6&n_calibration=7&n_train=8"
    a, b = load_dataset(ref), load_dataset(ref)
    assert isinstance(a.test, TensorSplit) and isinstance(b.test, TensorSplit)
    assert (len(a.train), len(a.calibration), len(a.test)) == (8, 7, 6)  # type: ignore[arg-type]
    assert a.test.x.shape == (6, 3, 4, 5)
    assert torch.equal(a.test.x, b.test.x)
    assert bool((a.test.y == -1).all())
    assert a.labelled is False and a.synthetic is True
    assert any("synthetic" in note for note in a.notes)
    assert not torch.equal(a.test.x[:6], a.calibration.x[:6])  # type: ignore[attr-defined]


def test_synthetic_defaults() -> None:
    splits = load_dataset("synthetic:16")
    assert (len(splits.train), len(splits.calibration), len(splits.test)) == (256, 256, 64)  # type: ignore[arg-type]


def test_digits_splits() -> None:
    splits = load_dataset("sklearn:digits")
    assert (len(splits.test), len(splits.calibration)) == (N_TEST, N_CALIBRATION) == (360, 360)  # type: ignore[arg-type]
    assert len(splits.train) == 1797 - 720  # type: ignore[arg-type]
    assert splits.labelled and splits.num_classes == 10
    x, y = splits.test[0]
    assert x.shape == (1, 8, 8) and 0 <= int(y) <= 9
    train_x = splits.train.x  # type: ignore[union-attr]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3  # normalised on train only


def test_calibration_subsets_are_deterministic_and_nest() -> None:
    splits = load_dataset("synthetic:4?n_calibration=100")
    big = calibration_subset(splits, 64, seed=3)
    small = calibration_subset(splits, 16, seed=3)
    assert torch.equal(big.x[:16], small.x)  # type: ignore[attr-defined]
    assert torch.equal(calibration_subset(splits, 16, seed=3).x, small.x)  # type: ignore[attr-defined]
    assert not torch.equal(calibration_subset(splits, 16, seed=4).x, small.x)  # type: ignore[attr-defined]


def test_calibration_subset_larger_than_the_split_names_its_size() -> None:
    splits = load_dataset("synthetic:4?n_calibration=10")
    with pytest.raises(ConfigError) as e:
        calibration_subset(splits, 11, seed=0)
    assert "11" in str(e.value) and "(10 samples)" in str(e.value)
    assert len(calibration_subset(splits, 10, seed=0)) == 10  # type: ignore[arg-type]


def test_iterate_covers_every_sample_once() -> None:
    split = TensorSplit(torch.arange(10.0).view(10, 1), torch.arange(10))
    plain = [y.tolist() for _, y in iterate(split, 4)]
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    shuffled = [v for _, y in iterate(split, 4, shuffle_seed=1) for v in y.tolist()]
    assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))
    assert shuffled == [v for _, y in iterate(split, 4, shuffle_seed=1) for v in y.tolist()]


def test_first_batch_repeats_a_small_split() -> None:
    split = TensorSplit(torch.arange(3.0).view(3, 1))
    assert first_batch(split, 7).view(-1).tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ConfigError):
        first_batch(TensorSplit(torch.zeros(0, 1)), 1)


def test_entrypoint_dataset(allow_toys: str) -> None:
    splits = load_dataset("entrypoint:tests.toys:toy_splits?n=5")
    assert isinstance(splits, DatasetSplits)
    assert (len(splits.train), len(splits.calibration), len(splits.test)) == (10, 5, 5)  # type: ignore[arg-type]
    assert splits.labelled and splits.num_classes == 10
    batches = list(iterate(splits.test, 4))
    assert [len(x) for x, _ in batches] == [4, 1] and batches[0][1].dtype == torch.int64
    assert first_batch(splits.test, 7).shape == (7, 1, 8, 8)
    with pytest.raises(ConfigError) as e:
        load_dataset("entrypoint:tests.toys:bad_splits")
    assert "'calibration' and 'test'" in str(e.value)


def test_dataset_entrypoint_outside_the_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_ALLOWED_MODULES", "tests.toys.other")
    with pytest.raises(ConfigError) as e:
        load_dataset("entrypoint:tests.toys:toy_splits")
    assert "FARM_ALLOWED_MODULES" in str(e.value)


def write_images(root: Path, classes: dict[str, int]) -> None:
    from PIL import Image

    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (12, 10), color=(40 * i, 80, 120)).save(root / name / f"{i}.png")


def test_imagefolder_flat_layout_is_split(tmp_path: Path) -> None:
    write_images(tmp_path, {"cat": 3, "dog": 3})
    splits = load_dataset(f"imagefolder:{tmp_path}?image_size=8&calibration_fraction=0.5")
    assert (len(splits.calibration), len(splits.test)) == (3, 3)  # type: ignore[arg-type]
    assert splits.num_classes == 2 and splits.labelled
    x, y = splits.test[0]
    assert x.shape == (3, 8, 8) and int(y) in (0, 1)


def test_imagefolder_train_and_val_layout(tmp_path: Path) -> None:
    write_images(tmp_path / "train", {"a": 2, "b": 2})
    write_images(tmp_path / "val", {"a": 1, "b": 1})
    splits = load_dataset(f"imagefolder:{tmp_path}?image_size=8")
    assert (len(splits.train), len(splits.test)) == (4, 2)  # type: ignore[arg-type]
    write_images(tmp_path / "val", {"c": 1})
    with pytest.raises(ConfigError, match="different class folders"):
        load_dataset(f"imagefolder:{tmp_path}?image_size=8")


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "readme.txt").write_text("x")
    with pytest.raises(ConfigError, match="holds no images"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    write_images(tmp_path / "one", {"cat": 1})
    with pytest.raises(ConfigError, match="at least 2"):
        load_dataset(f"imagefolder:{tmp_path / 'one'}")
