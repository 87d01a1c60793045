"""Fixtures shared by the hostile-file tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import toys


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid ``.pt2`` of the tiny MLP, with a dynamic batch dimension (so its graph holds expressions)."""
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    torch.manual_seed(0)
    model = toys.TinyMLP().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (torch.randn(2, *toys.SHAPE),), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path
