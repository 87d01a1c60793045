"""Tiny models and datasets for the unit tests, loaded through ``entrypoint:tests.toys:NAME`` references.

Importable as ``tests.toys``; a test must set FARM_ALLOWED_MODULES=tests.toys before it references them
(the conftest's ``allow_toys`` fixture does).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub

# Every toy takes 1x8x8 inputs (the digits shape) and returns 10 logits, so one synthetic dataset serves all.
SHAPE = (1, 8, 8)
SYNTHETIC = "synthetic:1x8x8?n_test=32&n_calibration=32&n_train=64"


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


class TinyMLP(nn.Module):
    """Every weight in a Linear layer: dynamic quantization covers all of it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyCNN(nn.Module):
    """Conv-BN-ReLU blocks and a small linear head: the convolutions hold 97 % of the parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class StubbedCNN(nn.Module):
    """A CNN prepared for eager-mode static quantization: QuantStub / DeQuantStub around the body."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 10)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.pool(self.relu(self.conv(x)))
        return self.dequant(self.fc(self.flatten(x)))

    def fuse_model(self) -> None:
        torch.ao.quantization.fuse_modules(self, [["conv", "relu"]], inplace=True)


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 10)
        self.b = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)


class NaNModel(nn.Module):
    """Runs, but every output is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1)) * float("nan")


class TinyRNN(nn.Module):
    """A recurrent toy: the 8x8 input read as 8 steps of 8 features, through an LSTM or a GRU, then a head."""

    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU]) -> None:
        super().__init__()
        self.rnn = cell(8, 24, batch_first=True)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(x.shape[0], 8, 8))
        return self.head(out[:, -1])


class ProcessKiller(nn.Module):
    """Ends the process that runs it, as the OOM killer or a crash in native code would."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        os._exit(137)


class NotAStateDict:
    """A plain Python object: a weights-only load refuses to unpickle it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def tiny_mlp(seed: int = 0) -> nn.Module:
    _seeded(seed)
    return TinyMLP().eval()


def tiny_cnn(seed: int = 0) -> nn.Module:
    _seeded(seed)
    return TinyCNN().eval()


def stubbed_cnn(seed: int = 0) -> nn.Module:
    _seeded(seed)
    return StubbedCNN().eval()


def branchy(seed: int = 0) -> nn.Module:
    _seeded(seed)
    return Branchy().eval()


def nan_model(seed: int = 0) -> nn.Module:
    _seeded(seed)
    return NaNModel().eval()


def tiny_lstm(seed: int = 0) -> nn.Module:
    _seeded(seed)
    return TinyRNN(nn.LSTM).eval()


def tiny_gru(seed: int = 0) -> nn.Module:
    _seeded(seed)
    return TinyRNN(nn.GRU).eval()


def process_killer(seed: int = 0) -> nn.Module:
    _seeded(seed)
    return ProcessKiller().eval()


def not_a_module() -> object:
    """An entrypoint that returns something other than an nn.Module."""
    return "a string"


def broken() -> nn.Module:
    """An entrypoint that raises."""
    raise RuntimeError("boom: the toy refuses to build")


def toy_splits(n: int = 8) -> dict[str, object]:
    """A dataset entrypoint returning plain (input, label) datasets."""
    gen = torch.Generator().manual_seed(n)

    def split(size: int) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(
            torch.randn((size, *SHAPE), generator=gen), torch.randint(0, 10, (size,), generator=gen)
        )

    return {"train": split(2 * n), "calibration": split(n), "test": split(n), "num_classes": 10}


def bad_splits() -> dict[str, object]:
    """A dataset entrypoint missing its test split."""
    return {"calibration": []}


class FlatHead(nn.Module):
    """Outputs that hardly depend on the input, one class for every sample: the issue's randomly initialised
    MobileNetV2 in miniature (a degenerate reference)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        with torch.no_grad():
            self.net[1].weight.mul_(1e-6)
            self.net[1].bias.zero_()
            self.net[1].bias[3] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class OutlierMLP(nn.Module):
    """A hidden unit stuck at 1e6 shares its activation tensor with the useful ones: per-tensor int8 activations
    round every useful value to zero, so statically quantized outputs collapse (SQNR 0 dB, cosine 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 33), nn.ReLU(), nn.Linear(33, 10))
        with torch.no_grad():
            self.net[1].weight[32].zero_()
            self.net[1].bias[32] = 1e6
            self.net[3].weight[:, 32].zero_()
            self.net[3].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def flat_head(seed: int = 0) -> nn.Module:
    _seeded(seed)
    return FlatHead().eval()


def outlier_mlp(seed: int = 0) -> nn.Module:
    _seeded(seed)
    return OutlierMLP().eval()
