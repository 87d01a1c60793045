"""farm:tiny-encoder: a small transformer encoder built in code, for token-id models with several inputs.

It takes ``(input_ids, attention_mask)`` and returns a dict (``embedding`` and ``logits``), the shape of a
Hugging Face encoder, so a sweep exercises integer inputs, several inputs and dict outputs without a download.
Attention is written with explicit ``nn.Linear`` q / k / v / out projections rather than
``nn.MultiheadAttention``, whose fused fast path torch.ao's dynamic quantization leaves in fp32: here every
projection and MLP layer is a plain Linear that ``dynamic`` turns into an int8 kernel.

The weights are a deterministic random init (seed 0), not trained: the figures it yields are agreement, cosine
and SQNR to its own fp32 outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

VOCAB_SIZE = 1000
DIM = 64
MAX_LEN = 64
HEADS = 4
LAYERS = 2
MLP_RATIO = 4  # MLP width per model dimension
CLASSES = 4
INIT_SEED = 0
#: Standard deviation of the log of each Linear output channel's scale factor.
ROW_SCALE_SPREAD = 0.5


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q / k / v / out Linear layers; padded keys get no weight."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        # The dtype's most negative finite value rather than -inf: a row with every key padded stays finite.
        scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """A pre-norm transformer encoder layer: x + attention(norm(x)), then x + mlp(norm(x)) with a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))


class TinyEncoder(nn.Module):
    """Token and learned position embeddings, ``layers`` encoder layers (2 by default), masked mean pooling and a
    4-way head.

    ``forward(input_ids, attention_mask)`` takes int64 tensors of shape (B, L), L <= 64, and returns
    ``{"embedding": (B, dim), "logits": (B, 4)}``. Positions whose mask is 0 neither receive attention nor
    enter the pooled embedding, so the token ids written there do not change the outputs.
    """

    def __init__(
        self,
        vocab_size: int = VOCAB_SIZE,
        dim: int = DIM,
        max_len: int = MAX_LEN,
        heads: int = HEADS,
        layers: int = LAYERS,
        classes: int = CLASSES,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, MLP_RATIO * dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        keep = attention_mask != 0
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)[None]
        for layer in self.layers:
            x = layer(x, keep)
        x = self.norm(x)
        weights = keep.to(x.dtype)[..., None]
        embedding = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return {"embedding": embedding, "logits": self.head(embedding)}


def build_tiny_encoder(dim: int = DIM, layers: int = LAYERS, heads: int = HEADS) -> TinyEncoder:
    """The built-in ``farm:tiny-encoder`` in eval mode, its weights drawn from seed 0 whatever the caller's RNG.

    ``farm:tiny-encoder?dim=384&layers=6&heads=12`` is a sentence encoder's size (MiniLM's); the default is small
    enough for tests.

    The norms' scales and shifts are drawn too (around 1 and 0), as a trained model's are: with the identity
    init every norm would be exactly representable in any dtype, which hides what half precision does to them.
    Each Linear output channel is scaled by a log-normal factor: with the default init every row has the same
    range, which hides what per-channel weight scales do.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model = TinyEncoder(dim=dim, heads=heads, layers=layers)
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.5)
            elif isinstance(module, nn.LayerNorm):
                nn.init.normal_(module.weight, mean=1.0, std=0.2)
                nn.init.normal_(module.bias, std=0.1)
            elif isinstance(module, nn.Linear):
                with torch.no_grad():  # output channels of unequal range, as training leaves them
                    module.weight.mul_(torch.randn(module.out_features, 1).mul(ROW_SCALE_SPREAD).exp())
    return model.eval()
