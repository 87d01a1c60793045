"""farm.quant.inputs: batches of one tensor, a tuple or a dict of tensors, and the output metrics are computed on."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from farm.errors import QuantizationError
from farm.quant import inputs


def ids(n: int = 4, length: int = 5) -> torch.Tensor:
    return torch.arange(n * length, dtype=torch.int64).reshape(n, length) + 990  # ids a bf16 cast would corrupt


def batches() -> dict[str, Any]:
    image = torch.linspace(-1, 1, 4 * 3).reshape(4, 3)
    return {
        "tensor": image,
        "tuple": (image, torch.tensor([0, 1, 2, 3])),
        "dict": {"input_ids": ids(), "attention_mask": torch.ones(4, 5, dtype=torch.bool)},
    }


def test_place_casts_only_floating_point_tensors() -> None:
    placed = inputs.place(
        {"x": torch.ones(2, 3), "input_ids": ids(2), "mask": torch.ones(2, 5, dtype=torch.bool)}, "cpu", torch.bfloat16
    )
    assert isinstance(placed, dict)
    assert placed["x"].dtype == torch.bfloat16
    assert placed["input_ids"].dtype == torch.int64 and torch.equal(placed["input_ids"], ids(2))
    assert placed["mask"].dtype == torch.bool
    image, cls = inputs.place((torch.ones(2, 3, dtype=torch.float64), torch.tensor([7, 8])), "cpu", torch.float32)  # type: ignore[misc]
    assert image.dtype == torch.float32 and cls.dtype == torch.int64
    kept = inputs.place(torch.ones(2, dtype=torch.float64), "cpu")
    assert isinstance(kept, torch.Tensor) and kept.dtype == torch.float64  # no dtype given: floats keep theirs


def test_call_passes_tuples_positionally_and_dicts_by_name() -> None:
    def model(a: torch.Tensor, b: torch.Tensor | None = None, *, scale: int = 1) -> Any:
        return (a, b, scale)

    x = torch.zeros(1)
    assert inputs.call(model, x) == (x, None, 1)
    assert inputs.call(model, (x, x + 1))[1].item() == 1
    assert inputs.call(model, {"b": x + 2, "a": x})[1].item() == 2


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict"])
def test_take_concat_repeat_keep_structure_and_samples(kind: str) -> None:
    batch = batches()[kind]
    assert inputs.batch_len(batch) == 4
    first, last = inputs.take(batch, slice(0, 1)), inputs.take(batch, torch.tensor([3]))
    joined = inputs.concat([first, last])
    assert type(joined) is type(batch) and inputs.batch_len(joined) == 2
    both = inputs.take(batch, torch.tensor([0, 3]))
    for got, want in zip(_tensors(joined), _tensors(both), strict=True):
        assert torch.equal(got, want) and got.dtype == want.dtype
    repeated = inputs.repeat_to(batch, 10)
    assert inputs.batch_len(repeated) == 10
    for got, want in zip(_tensors(repeated), _tensors(batch), strict=True):
        assert torch.equal(got[4:8], want) and torch.equal(got[8:], want[:2])  # cycles
    assert inputs.batch_len(inputs.repeat_to(batch, 3)) == 3


def test_collate_stacks_samples_of_each_structure() -> None:
    stacked = inputs.collate([{"input_ids": ids(1)[0], "attention_mask": torch.ones(5, dtype=torch.int64)}] * 3)
    assert isinstance(stacked, dict) and stacked["input_ids"].shape == (3, 5)
    assert stacked["input_ids"].dtype == torch.int64
    pair = inputs.collate([(torch.ones(2), 4), (torch.zeros(2), 5)])
    assert isinstance(pair, tuple) and pair[0].shape == (2, 2) and pair[1].tolist() == [4, 5]
    plain = inputs.collate([torch.ones(3), torch.zeros(3)])
    assert isinstance(plain, torch.Tensor) and plain.shape == (2, 3)
    with pytest.raises(QuantizationError, match="cannot be stacked"):
        inputs.collate([torch.ones(3), torch.ones(4)])


def test_concat_refuses_batches_of_different_structures() -> None:
    with pytest.raises(QuantizationError, match="change structure"):
        inputs.concat([{"a": torch.ones(1)}, {"b": torch.ones(1)}])
    with pytest.raises(QuantizationError, match="change structure"):
        inputs.concat([(torch.ones(1),), (torch.ones(1), torch.ones(1))])


def test_describe_names_shapes_without_the_batch_dim_and_dtypes() -> None:
    assert inputs.describe(batches()["dict"]) == [
        {"name": "input_ids", "shape": [5], "dtype": "int64"},
        {"name": "attention_mask", "shape": [5], "dtype": "bool"},
    ]
    assert inputs.describe(batches()["tuple"]) == [
        {"name": "0", "shape": [3], "dtype": "float32"},
        {"name": "1", "shape": [], "dtype": "int64"},
    ]
    assert inputs.describe(torch.zeros(2, 1, 8, 8)) == [{"name": "0", "shape": [1, 8, 8], "dtype": "float32"}]


def test_select_output_default_rule() -> None:
    logits, emb, out = torch.ones(2, 3), torch.zeros(2, 4), torch.full((2, 2), 5.0)
    assert inputs.select_output(logits) is logits
    assert inputs.select_output((logits, emb)) is logits
    assert inputs.select_output([(emb,), logits]) is emb
    assert inputs.select_output({"embedding": emb, "logits": logits}) is logits
    assert inputs.select_output({"aux": emb, "out": out}) is out
    assert inputs.select_output({"embedding": emb, "pooled": out}) is emb  # first value
    assert inputs.select_output(OrderedDict(last_hidden_state=emb, logits=logits)) is logits
    assert inputs.select_output(SimpleNamespace(loss=None, logits=logits)) is logits  # Hugging Face style


def test_select_output_by_name_or_index() -> None:
    logits, emb = torch.ones(2, 3), torch.zeros(2, 4)
    assert inputs.select_output({"embedding": emb, "logits": logits}, "embedding") is emb
    assert inputs.select_output(SimpleNamespace(hidden=emb, logits=logits), "hidden") is emb
    assert inputs.select_output((logits, emb), 1) is emb


@pytest.mark.parametrize(
    ("out", "output", "words"),
    [
        ({"embedding": torch.ones(1), "logits": torch.ones(1)}, "nope", "outputs are embedding, logits"),
        ((torch.ones(1), torch.ones(1)), 2, "2 outputs (indices 0..1)"),
        ((torch.ones(1), torch.ones(1)), "embedding", "index 0..1"),
        (torch.ones(1), "embedding", "single tensor"),
        (torch.ones(1), 0, "single tensor"),
        ({"embedding": torch.ones(1)}, 0, "outputs are embedding"),
    ],
)
def test_select_output_errors_are_one_line_naming_what_exists(out: Any, output: Any, words: str) -> None:
    with pytest.raises(QuantizationError) as e:
        inputs.select_output(out, output)
    message = str(e.value)
    assert words in message and "\n" not in message and str(output) in message


def test_select_output_refuses_an_output_without_tensors() -> None:
    with pytest.raises(QuantizationError, match="holds no tensor"):
        inputs.select_output(None)


def _tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    return list(batch.values()) if isinstance(batch, dict) else list(batch)


def test_torch_ao_example_args_follow_the_forward_signature_not_the_dicts_order() -> None:
    from torch import nn

    from farm.quant.static import example_args

    class TwoInputs(nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return input_ids * attention_mask

    ids, mask = torch.tensor([[5, 6]]), torch.tensor([[1, 0]])
    args = example_args({"attention_mask": mask, "input_ids": ids}, TwoInputs())
    assert args[0] is ids and args[1] is mask
    assert example_args((ids, mask)) == (ids, mask) and example_args(ids) == (ids,)
