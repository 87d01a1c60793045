"""bf16 / fp16 cast: normalisation layers stay in fp32, the rest is cast; token ids are never cast."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from farm.quant.config import parse_method
from farm.quant.context import QuantContext
from farm.quant.fp import FLOAT_NORM, apply_half, cast_keeping_norms
from farm.zoo.encoder import build_tiny_encoder
from tests.unit.zoo.test_encoder import token_batch


def _embedding_figures(model: nn.Module, reference: nn.Module) -> tuple[float, float]:
    """(mean cosine, SQNR dB) of the embedding to fp32's over a few token batches."""
    got, want = [], []
    with torch.no_grad():
        for seed in range(3):
            ids, mask = token_batch(seed, batch=32)
            got.append(model(ids, mask)["embedding"].float())
            want.append(reference(ids, mask)["embedding"])
    out, ref = torch.cat(got), torch.cat(want)
    cosine = nn.functional.cosine_similarity(out, ref, dim=1).mean().item()
    sqnr_db = 10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum()).item()
    return cosine, sqnr_db


def test_bf16_cast_keeps_the_encoders_norms_in_fp32_and_is_closer_to_fp32() -> None:
    encoder = build_tiny_encoder()
    cfg = parse_method("bf16", {"mode": "cast"})
    outcome = apply_half(encoder, cfg, QuantContext("farm:tiny-encoder", example_input=torch.zeros(1)))
    model = outcome.model
    assert outcome.input_dtype == torch.bfloat16 and outcome.autocast_dtype is None
    norms = [m for m in model.modules() if getattr(m, FLOAT_NORM, False)]
    assert len(norms) == 5  # two per layer and the final one
    assert all(p.dtype == torch.float32 for n in norms for p in n.parameters())
    assert model.tokens.weight.dtype == torch.bfloat16  # fp32 tables would look up the very same half values
    assert model.layers[0].attention.q.weight.dtype == torch.bfloat16 and model.head.weight.dtype == torch.bfloat16
    assert encoder.norm.weight.dtype == torch.float32 and encoder.head.weight.dtype == torch.float32  # untouched

    kept_cosine, kept_sqnr = _embedding_figures(model, encoder)
    plain_cosine, plain_sqnr = _embedding_figures(copy.deepcopy(encoder).to(torch.bfloat16), encoder)
    assert kept_cosine >= 0.99
    assert kept_cosine > plain_cosine and kept_sqnr > plain_sqnr + 0.3


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.shared = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gn(torch.relu(self.bn(self.conv(x)))).mean(dim=(2, 3))
        return self.head(self.shared(self.shared(y)))  # one norm module used twice


def test_batch_and_group_norms_run_in_fp32_inside_a_half_model_that_traces() -> None:
    torch.manual_seed(0)
    model = _ConvNet().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    half = cast_keeping_norms(model, torch.bfloat16)
    assert all(getattr(m, FLOAT_NORM, False) for m in (half.bn, half.gn, half.shared))
    assert half.bn.running_var.dtype == torch.float32 and half.conv.weight.dtype == torch.bfloat16
    assert sum(bool(getattr(m, FLOAT_NORM, False)) for m in half.modules()) == 3
    assert set(half.state_dict()) == set(model.state_dict())  # the user's class loads the names as they are
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        out, ref = half(x.to(torch.bfloat16)), model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(half, x.to(torch.bfloat16))
        again = traced(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.equal(again, out)
    assert nn.functional.cosine_similarity(out.float(), ref, dim=1).min() > 0.99


def test_a_norm_alone_is_wrapped_and_a_serialized_graph_is_cast_plainly() -> None:
    alone = cast_keeping_norms(nn.LayerNorm(4), torch.bfloat16)
    assert getattr(alone, FLOAT_NORM, False)
    assert alone(torch.ones(2, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    ctx = QuantContext("file:m.pt", example_input=torch.zeros(1), graph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about .grad while casting a ScriptModule
        outcome = apply_half(scripted, parse_method("bf16"), ctx)
    assert isinstance(outcome.model, torch.jit.ScriptModule)
    assert outcome.model(torch.ones(2, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16
