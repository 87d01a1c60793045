"""The built-in digits models and dataset: real data with no download (scikit-learn ships it).

The splits are fixed (a permutation seeded with 0), so every machine calibrates and tests on the same
samples. The models train deterministically on the train split the first time they are asked for and are
cached under the cache directory, keyed by their version and the torch version.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

DIGITS_VERSION = 2  # 2: initial weights seeded (v1 depended on the caller's RNG state)
N_TEST, N_CALIBRATION = 360, 360
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_calibration: torch.Tensor
    y_calibration: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


_cache: DigitsData | None = None


def digits_data() -> DigitsData:
    """The digits splits as normalised float tensors of shape (N, 1, 8, 8) with int64 labels."""
    global _cache
    if _cache is None:
        data, target = _digits_arrays()
        x = torch.tensor(data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        y = torch.tensor(target, dtype=torch.int64)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
        test, cal, train = perm[:N_TEST], perm[N_TEST : N_TEST + N_CALIBRATION], perm[N_TEST + N_CALIBRATION :]
        # Normalise with the train split's statistics only.
        mean, std = x[train].mean(), x[train].std()
        x = (x - mean) / std
        _cache = DigitsData(x[train], y[train], x[cal], y[cal], x[test], y[test])
    return _cache


def _digits_arrays() -> tuple[Any, Any]:
    """(pixels (1797, 64) float64, labels (1797,) int): what ``sklearn.datasets.load_digits`` returns, read from the
    file scikit-learn ships (``datasets/data/digits.csv.gz``: 64 pixels then the label, a sample per line) the way
    it reads it, without importing ``sklearn.datasets`` (0.9 s of every fresh process's first job, torch loaded).
    A layout that moved the file falls back to ``load_digits``."""
    import gzip
    from importlib.util import find_spec

    import numpy as np

    spec = find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        raw = load_digits()
        return raw.data, raw.target
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DigitsCNN(nn.Module):
    """Four 3x3 conv blocks and a 10-way linear head; convolutions hold 99.5 % of the parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(1, 32),
            *_conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128),
            *_conv_bn_relu(128, 128),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class DigitsMLP(nn.Module):
    """A three-layer perceptron: every weight sits in a Linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


_BUILDERS: dict[str, tuple[type[nn.Module], int, float]] = {
    # name: (class, epochs, Adam learning rate)
    "digits-cnn": (DigitsCNN, 12, 3e-3),
    "digits-mlp": (DigitsMLP, 40, 2e-3),
}


def build_digits_model(name: str, cache_dir: Path) -> nn.Module:
    """The trained built-in model ``name``, from the cache or trained now (a few seconds) and cached.

    Args:
        name: ``digits-cnn`` or ``digits-mlp``.
        cache_dir: where trained weights are kept; written atomically, safe for concurrent workers.

    Returns:
        The model in eval mode.
    """
    cls, epochs, lr = _BUILDERS[name]
    tag = torch.__version__.split("+")[0]
    path = cache_dir / f"{name}-v{DIGITS_VERSION}-torch{tag}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the initial weights, like the training order, must not depend on the caller's RNG
        model = cls()
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    _train(model, epochs, lr)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval()


def _train(model: nn.Module, epochs: int, lr: float) -> None:
    data = digits_data()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights on every run of this machine
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            n = len(data.x_train)
            for epoch in range(epochs):
                model.train()
                order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
                for i in range(0, n, 64):
                    idx = order[i : i + 64]
                    loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
