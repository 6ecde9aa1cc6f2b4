from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TokenEmbedding(nn.Module):
    """Cuts a flat feature row into tokens of `token_size` consecutive values and embeds each at its position.

    With token_size 1 every tabular feature is a token; the 8x8 digits with token_size 8 are 8 row-tokens.
    """

    def __init__(self, *, num_inputs: int, token_size: int, d_model: int):
        super().__init__()
        assert num_inputs % token_size == 0, "build_model checks that the tokens tile the inputs"
        self.token_size = token_size
        self.proj = nn.Linear(token_size, d_model)
        self.pos = nn.Parameter(torch.randn(num_inputs // token_size, d_model) * 0.02)

    def forward(self, x_bf: torch.Tensor) -> torch.Tensor:
        x_btk = x_bf.reshape(x_bf.shape[0], -1, self.token_size)
        return self.proj(x_btk) + self.pos


class Attention(nn.Module):
    def __init__(self, *, d_model: int, n_heads: int):
        super().__init__()
        self.head_dim = d_model // n_heads
        self.wq = nn.Linear(d_model, d_model)
        self.wk = nn.Linear(d_model, d_model)
        self.wv = nn.Linear(d_model, d_model)
        self.wo = nn.Linear(d_model, d_model)

    def forward(self, x_btd: torch.Tensor) -> torch.Tensor:
        b, t, _ = x_btd.shape
        # -1, not n_heads: under tensor parallelism each rank holds only its share of the heads.
        q_bhtk, k_bhtk, v_bhtk = (
            proj(x_btd).view(b, t, -1, self.head_dim).transpose(1, 2) for proj in (self.wq, self.wk, self.wv)
        )
        out_bhtk = F.scaled_dot_product_attention(q_bhtk, k_bhtk, v_bhtk)
        return self.wo(out_bhtk.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, *, d_model: int, ffn_size: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, ffn_size)
        self.w2 = nn.Linear(ffn_size, d_model)

    def forward(self, x_btd: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x_btd)))


class Block(nn.Module):
    """Pre-norm transformer block; the residual stream stays fp32 under bf16 autocast."""

    def __init__(self, *, d_model: int, n_heads: int, ffn_size: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(d_model)
        self.attention = Attention(d_model=d_model, n_heads=n_heads)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.feed_forward = FeedForward(d_model=d_model, ffn_size=ffn_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x_btd: torch.Tensor) -> torch.Tensor:
        h_btd = x_btd + self.dropout(self.attention(self.attention_norm(x_btd)))
        return h_btd + self.dropout(self.feed_forward(self.ffn_norm(h_btd)))


class ClassifierHead(nn.Module):
    """Final norm, mean over tokens, linear to the outputs."""

    def __init__(self, *, d_model: int, num_outputs: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, num_outputs)

    def forward(self, x_btd: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x_btd).mean(dim=1))


class Transformer(nn.Module):
    """A small encoder over feature tokens.

    `embed`, `layers` and `head` are the units pipeline parallelism splits: a stage keeps a contiguous run
    of layers and sets `embed` / `head` to None when another stage owns them, so parameter names stay
    those of the whole model (torchtitan's layout).
    """

    def __init__(
        self,
        *,
        num_inputs: int,
        token_size: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        ffn_size: int,
        num_outputs: int,
        dropout: float,
    ):
        super().__init__()
        self.embed: TokenEmbedding | None = TokenEmbedding(
            num_inputs=num_inputs, token_size=token_size, d_model=d_model
        )
        self.layers = nn.ModuleDict(
            {
                str(i): Block(d_model=d_model, n_heads=n_heads, ffn_size=ffn_size, dropout=dropout)
                for i in range(n_layers)
            }
        )
        self.head: ClassifierHead | None = ClassifierHead(d_model=d_model, num_outputs=num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        for layer in self.layers.values():
            h = layer(h)
        return self.head(h) if self.head is not None else h
