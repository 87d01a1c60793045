"""farm:tiny-encoder: a token-id model with two inputs and a dict output, built in code."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from farm.zoo.encoder import DIM, MAX_LEN, TinyEncoder, build_tiny_encoder
from farm.zoo.models import load_model


def token_batch(seed: int, batch: int = 16, length: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids (1..999) with an attention mask of random lengths 8..length; padding id 0."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 1000, (batch, length), generator=g) * mask
    return ids, mask


def test_outputs_are_an_embedding_and_logits() -> None:
    model = build_tiny_encoder()
    ids, mask = token_batch(0, batch=5, length=20)
    with torch.no_grad():
        out = model(ids, mask)
    assert set(out) == {"embedding", "logits"}
    assert out["embedding"].shape == (5, DIM) and out["embedding"].dtype == torch.float32
    assert out["logits"].shape == (5, 4) and out["logits"].dtype == torch.float32
    assert torch.isfinite(out["embedding"]).all() and not model.training


def test_tokens_past_the_mask_change_nothing() -> None:
    model = build_tiny_encoder()
    ids, mask = token_batch(1)
    other = torch.where(mask.bool(), ids, torch.randint(1, 1000, ids.shape, generator=torch.Generator().manual_seed(9)))
    assert not torch.equal(ids, other)  # the padded positions really differ
    inside = ids.clone()
    inside[:, 0] = (inside[:, 0] % 999) + 1  # a token inside the mask
    with torch.no_grad():
        base, padded, changed = model(ids, mask), model(other, mask), model(inside, mask)
    torch.testing.assert_close(padded["embedding"], base["embedding"], rtol=0, atol=1e-6)
    torch.testing.assert_close(padded["logits"], base["logits"], rtol=0, atol=1e-6)
    assert (changed["embedding"] - base["embedding"]).abs().amax(dim=1).min() > 1e-4  # every sample moved


def test_a_sample_with_no_token_stays_finite() -> None:
    model = build_tiny_encoder()
    ids, mask = token_batch(2, batch=3)
    mask[1] = 0
    with torch.no_grad():
        out = model(ids, mask)
    assert torch.isfinite(out["embedding"]).all() and torch.isfinite(out["logits"]).all()


def test_init_is_deterministic_whatever_the_callers_rng() -> None:
    torch.manual_seed(123)
    first = build_tiny_encoder().state_dict()
    torch.manual_seed(456)
    second = build_tiny_encoder().state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["tokens.weight"], TinyEncoder().state_dict()["tokens.weight"])


def test_the_builtin_reference_loads_it() -> None:
    loaded = load_model("farm:tiny-encoder")
    assert isinstance(loaded.module, TinyEncoder) and not loaded.graph and not loaded.module.training
    expected = build_tiny_encoder().state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.module.state_dict().items())


def test_torch_jit_trace_takes_both_inputs_and_follows_other_shapes() -> None:
    model = build_tiny_encoder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, token_batch(3, batch=4, length=32), strict=False)
    ids, mask = token_batch(4, batch=7, length=MAX_LEN)
    with torch.no_grad():
        expected, got = model(ids, mask), traced(ids, mask)
    torch.testing.assert_close(got["embedding"], expected["embedding"])
    torch.testing.assert_close(got["logits"], expected["logits"])


def test_dynamic_quantization_replaces_every_linear_layer() -> None:
    from torch.ao.nn.quantized import dynamic as nnqd
    from torch.ao.quantization import quantize_dynamic

    model = build_tiny_encoder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    float_linears = [m for m in quantized.modules() if type(m) is nn.Linear]
    int8_linears = [m for m in quantized.modules() if isinstance(m, nnqd.Linear)]
    assert float_linears == [] and not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert len(int8_linears) == 2 * (4 + 2) + 1  # q, k, v, out and the MLP's two per layer, and the head
    ids, mask = token_batch(5)
    with torch.no_grad():
        ref, out = model(ids, mask), quantized(ids, mask)
    cosine = nn.functional.cosine_similarity(out["embedding"], ref["embedding"], dim=1)
    assert cosine.min() > 0.99


def test_size_options_build_a_larger_encoder() -> None:
    loaded = load_model("farm:tiny-encoder?dim=96&layers=3&heads=6")
    model = loaded.module
    assert isinstance(model, TinyEncoder) and len(model.layers) == 3
    assert model.layers[0].attention.heads == 6 and model.tokens.embedding_dim == 96
    ids, mask = token_batch(5, batch=2, length=16)
    with torch.no_grad():
        out = model(ids, mask)
    assert out["embedding"].shape == (2, 96) and out["logits"].shape == (2, 4)
    # Seeded like the default: the same options give the same weights.
    again = build_tiny_encoder(dim=96, layers=3, heads=6).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())
