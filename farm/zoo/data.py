"""Dataset references to train / calibration / test splits.

Every split yields ``(input, label)`` pairs; unlabelled data (synthetic inputs, label-free entrypoints)
carries the label -1, and :attr:`DatasetSplits.labelled` says which is which. Splits are deterministic:
the same reference gives the same samples in the same order on every machine.

The validation split (``farm tune``'s sensitivity stage, which must never choose on the test split) is drawn from
the calibration split, never from the test split: the calibration split is permuted with seed
:data:`VALIDATION_SEED` (0) and its second half is the validation split. A calibration subset is the first ``n``
samples of the permutation of its job's seed, so one of seed 0 (every job's default) and at most half the split
never sees a validation sample; a larger one overlaps it (its observers then saw some of the samples sensitivity is
measured on, which can only flatter a layer's ranking, never the test-split figures a tune's answer is chosen by).
A dataset entrypoint may give its own ``validation`` split.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from farm.errors import ConfigError
from farm.quant.inputs import Batch, batch_len, collate, repeat_to, take
from farm.zoo.refs import Ref, check_entrypoint_allowed, parse_dataset_ref

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SYNTHETIC_SEED = 1234
#: The seed of the calibration split's permutation whose second half is the validation split.
VALIDATION_SEED = 0
#: The splits a job's metrics may be computed on (JobSpec.split).
SPLITS = ("test", "validation")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


class TensorSplit(Dataset):
    """A split held in memory as tensors; label -1 where there are none.

    ``x`` is a :data:`~farm.quant.inputs.Batch`: one tensor, or a tuple / dict of tensors for a model with several
    inputs (token ids and an attention mask), samples along dim 0 of each.
    """

    def __init__(self, x: Batch, y: torch.Tensor | None = None):
        self.x = x
        self.y = y if y is not None else torch.full((batch_len(x),), -1, dtype=torch.int64)

    def __len__(self) -> int:
        return batch_len(self.x)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        return take(self.x, i), self.y[i]  # type: ignore[arg-type]

    def take(self, indices: torch.Tensor | slice) -> TensorSplit:
        return TensorSplit(take(self.x, indices), self.y[indices])


class _Pairs(Dataset):
    """Wraps a user dataset so that every item is an ``(input, label)`` pair.

    A 2-item tuple or list is ``(input, label)``; an input made of several tensors is a dict, or a tuple nested as
    the first item: ``((image, class_id), label)``.
    """

    def __init__(self, inner: Any):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        item = self.inner[i]
        if not isinstance(item, (tuple, list)):
            return item, -1
        if len(item) == 1:
            return item[0], -1
        label = item[1] if len(item) == 2 else None
        not_scalar = isinstance(label, (tuple, list)) or (isinstance(label, torch.Tensor) and label.numel() != 1)
        if label is None or not_scalar:
            # (ids, mask) read as (input, label) would run the model unmasked and call the mask a label.
            raise ConfigError(
                f"dataset item {i} is a {len(item)}-item {type(item).__name__} that is not (input, scalar label): "
                "give several inputs as a dict, or as a tuple nested as the first item: ((ids, mask), label)"
            )
        return item[0], label


@dataclass
class DatasetSplits:
    """The three splits of a dataset.

    Attributes:
        ref: the reference string.
        train: samples QAT fine-tunes on (None: QAT can't run on this dataset).
        calibration: samples static PTQ and QAT draw their calibration set from.
        test: samples every metric is computed on.
        labelled: whether the labels are real (accuracy is then reported).
        num_classes: number of classes when known.
        synthetic: True for random inputs (accuracy is then relative to fp32 only).
        notes: things the user should know about these numbers.
        validation: samples a tune ranks layers on, disjoint from the test split (None: drawn from the calibration
            split by :func:`load_dataset`, see the module's docstring).
    """

    ref: str
    train: Dataset | None
    calibration: Dataset
    test: Dataset
    labelled: bool
    num_classes: int | None = None
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)
    validation: Dataset | None = None


def load_dataset(ref: str | Ref, *, allowed: Sequence[str] | None = None) -> DatasetSplits:
    """Open the dataset a reference names.

    Raises:
        ConfigError: unknown dataset, missing or empty image folder, entrypoint outside the allowlist.
    """
    parsed = parse_dataset_ref(ref) if isinstance(ref, str) else ref
    if parsed.scheme == "sklearn":
        splits = _digits(parsed)
    elif parsed.scheme == "imagefolder":
        splits = _imagefolder(parsed)
    elif parsed.scheme == "synthetic":
        splits = _synthetic(parsed)
    elif parsed.scheme == "tokens":
        splits = _tokens(parsed)
    else:
        splits = _entrypoint(parsed, allowed)
    if splits.validation is None:
        splits.validation = validation_subset(splits.calibration)
    return splits


def validation_subset(calibration: Dataset) -> Dataset:
    """The validation split drawn from a calibration split: the second half of its permutation by
    :data:`VALIDATION_SEED`, in the split's own order (a split of one sample is its own validation split)."""
    size = len(calibration)  # type: ignore[arg-type]
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    idx = perm[size // 2 :].sort().values
    if isinstance(calibration, TensorSplit):
        return calibration.take(idx)
    return Subset(calibration, idx.tolist())


def for_split(splits: DatasetSplits, split: str) -> DatasetSplits:
    """``splits`` with the split a job computes its metrics on in place of the test split.

    Raises:
        ConfigError: ``split`` is not one of :data:`SPLITS`, or the dataset has no validation split.
    """
    if split == "test":
        return splits
    if split != "validation":
        raise ConfigError(f"unknown split {split!r}: a job is evaluated on one of {', '.join(SPLITS)}")
    if splits.validation is None or len(splits.validation) == 0:  # type: ignore[arg-type]
        raise ConfigError(f"dataset {splits.ref} has no validation split")
    note = f"metrics on the validation split ({len(splits.validation)} samples), not the test split"  # type: ignore[arg-type]
    return dataclasses.replace(splits, test=splits.validation, notes=[*splits.notes, note])


def _digits(ref: Ref) -> DatasetSplits:
    from farm.zoo.digits import digits_data

    d = digits_data()
    return DatasetSplits(
        str(ref),
        train=TensorSplit(d.x_train, d.y_train),
        calibration=TensorSplit(d.x_calibration, d.y_calibration),
        test=TensorSplit(d.x_test, d.y_test),
        labelled=True,
        num_classes=10,
    )


def _synthetic(ref: Ref) -> DatasetSplits:
    shape = tuple(int(s) for s in ref.body.split("x"))
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    sizes = {k: ref.int_option(k, d) for k, d in (("n_test", 64), ("n_calibration", 256), ("n_train", 256))}
    test = TensorSplit(torch.randn((sizes["n_test"], *shape), generator=gen))
    calibration = TensorSplit(torch.randn((sizes["n_calibration"], *shape), generator=gen))
    train = TensorSplit(torch.randn((sizes["n_train"], *shape), generator=gen))
    notes = [
        "synthetic inputs: no labels, accuracy is reported only as agreement with fp32; "
        "calibration on random tensors does not reflect real activation ranges"
    ]
    return DatasetSplits(str(ref), train, calibration, test, labelled=False, synthetic=True, notes=notes)


def _tokens(ref: Ref) -> DatasetSplits:
    """``tokens:LEN``: random token ids (1 .. vocab-1) of a random length 8..LEN per sample, padded with 0 to LEN,
    each sample a dict ``{"input_ids", "attention_mask"}`` of int64; unlabelled."""
    length, vocab = int(ref.body), ref.int_option("vocab", 1000)
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)

    def split(n: int) -> TensorSplit:
        lengths = torch.randint(min(8, length), length + 1, (n, 1), generator=gen)
        mask = (torch.arange(length).expand(n, length) < lengths).to(torch.int64)
        ids = torch.randint(1, max(vocab, 2), (n, length), generator=gen, dtype=torch.int64) * mask
        return TensorSplit({"input_ids": ids, "attention_mask": mask})

    sizes = {k: ref.int_option(k, d) for k, d in (("n_test", 64), ("n_calibration", 256), ("n_train", 256))}
    test, calibration, train = split(sizes["n_test"]), split(sizes["n_calibration"]), split(sizes["n_train"])
    notes = [
        "synthetic token ids: no labels, accuracy is reported only as agreement with fp32 (cosine and SQNR say "
        "more for embeddings); calibration on random ids does not reflect real activation ranges"
    ]
    return DatasetSplits(str(ref), train, calibration, test, labelled=False, synthetic=True, notes=notes)


def _imagefolder(ref: Ref) -> DatasetSplits:
    root = Path(ref.body).expanduser()
    if not root.is_dir():
        raise ConfigError(f"imagefolder path {root} does not exist or is not a directory")
    size = ref.int_option("image_size", 224)
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Resize(int(round(size / 0.875))),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    subdirs = {p.name: p for p in root.iterdir() if p.is_dir()}
    held_out = subdirs.get("val") or subdirs.get("test")
    if "train" in subdirs and held_out is not None:
        train = _image_folder(subdirs["train"], transform)
        test = _image_folder(held_out, transform)
        if train.class_to_idx != test.class_to_idx:
            raise ConfigError(f"imagefolder {root}: train/ and {held_out.name}/ hold different class folders")
        calibration: Dataset = train
        num_classes = len(train.classes)
        test_split: Dataset = test
    else:
        full = _image_folder(root, transform)
        if len(full) < 2:
            raise ConfigError(f"imagefolder {root} holds {len(full)} image; at least 2 are needed to split it")
        fraction = ref.float_option("calibration_fraction", 0.5)
        perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(0)).tolist()
        k = min(len(full) - 1, max(1, int(math.floor(len(full) * fraction))))
        calibration = Subset(full, perm[:k])
        test_split = Subset(full, perm[k:])
        num_classes = len(full.classes)
    limit = ref.option("test_size")
    if limit is not None and int(limit) < len(test_split):  # type: ignore[arg-type]
        test_split = Subset(test_split, list(range(int(limit))))
    return DatasetSplits(str(ref), calibration, calibration, test_split, labelled=True, num_classes=num_classes)


def _image_folder(path: Path, transform: Any) -> Any:
    from torchvision.datasets import ImageFolder

    has_images = any(p.suffix.lower() in _IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file())
    if not has_images:
        raise ConfigError(f"imagefolder {path} holds no images (expected CLASS/IMAGE files such as cat/001.jpg)")
    try:
        return ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError(f"imagefolder {path} holds no usable images: {e}") from None


def _entrypoint(ref: Ref, allowed: Sequence[str] | None) -> DatasetSplits:
    from farm.zoo.models import _literal, import_entrypoint

    module_name, function_name = check_entrypoint_allowed(ref, allowed)
    function = import_entrypoint(module_name, function_name, str(ref))
    result = function(**{k: _literal(v) for k, v in ref.options})
    if isinstance(result, DatasetSplits):
        result.ref = str(ref)
        return result
    if not isinstance(result, Mapping) or "calibration" not in result or "test" not in result:
        raise ConfigError(
            f"dataset entrypoint {str(ref)!r} must return DatasetSplits or a mapping with 'calibration' and "
            "'test' datasets (and optionally 'train', 'validation', 'num_classes', 'labelled')"
        )
    train = result.get("train")
    validation = result.get("validation")
    return DatasetSplits(
        str(ref),
        train=_Pairs(train) if train is not None else None,
        calibration=_Pairs(result["calibration"]),
        test=_Pairs(result["test"]),
        labelled=bool(result.get("labelled", True)),
        num_classes=result.get("num_classes"),
        validation=_Pairs(validation) if validation is not None else None,
    )


def check_calibration_size(splits: DatasetSplits, n: int) -> int:
    """Refuse a calibration size larger than the dataset's calibration split (``quantize``, ``sweep plan``).

    Returns:
        The split's size.

    Raises:
        ConfigError: ``n`` is larger than the split (the message gives the split's size).
    """
    size = len(splits.calibration)  # type: ignore[arg-type]
    if n > size:
        raise ConfigError(f"calibration size {n} is larger than the calibration split of {splits.ref} ({size} samples)")
    return size


def calibration_subset(splits: DatasetSplits, n: int, seed: int) -> Dataset:
    """``n`` samples drawn deterministically (by ``seed``) from the calibration split.

    Subsets of one seed nest: the first 32 of 256 are the 32-sample set.

    Raises:
        ConfigError: ``n`` is larger than the split (the message gives the split's size).
    """
    size = check_calibration_size(splits, n)
    idx = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]
    if isinstance(splits.calibration, TensorSplit):
        return splits.calibration.take(idx)
    return Subset(splits.calibration, idx.tolist())


def iterate(
    dataset: Dataset, batch_size: int, *, shuffle_seed: int | None = None
) -> Iterator[tuple[Batch, torch.Tensor]]:
    """Batches of ``(inputs, labels)``; shuffled with ``shuffle_seed`` when given. Inputs keep their structure
    (tensor, tuple or dict of tensors) and their dtypes."""
    n = len(dataset)  # type: ignore[arg-type]
    if isinstance(dataset, TensorSplit):
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
            if shuffle_seed is not None
            else None
        )
        for i in range(0, n, batch_size):
            idx: torch.Tensor | slice = slice(i, i + batch_size) if order is None else order[i : i + batch_size]
            yield take(dataset.x, idx), dataset.y[idx]
        return
    generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle_seed is not None, generator=generator, collate_fn=_collate
    )
    yield from loader


def _collate(items: list[tuple[Any, Any]]) -> tuple[Batch, torch.Tensor]:
    """(inputs, labels) of a user dataset's items: tuples stay tuples (positional inputs), dicts stay dicts."""
    from torch.utils.data import default_collate

    return collate([x for x, _ in items]), torch.as_tensor(default_collate([y for _, y in items]), dtype=torch.int64)


def first_batch(dataset: Dataset, batch_size: int) -> Batch:
    """``batch_size`` real inputs for benchmarking, repeating the split if it is smaller."""
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError("the test split is empty")
    if isinstance(dataset, TensorSplit):
        return repeat_to(dataset.x, batch_size)
    return repeat_to(collate([dataset[i][0] for i in range(min(batch_size, n))]), batch_size)
