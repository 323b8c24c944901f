"""A small Transformer encoder, shared by the attention baselines (PatchTST, iTransformer, ViT).

The forecasting papers use the vanilla (post-norm) encoder layer

    x = norm(x + dropout(attention(x)))
    x = norm(x + dropout(W2 dropout(gelu(W1 x))))

ViT the pre-norm one (``norm_first=True``)

    x = x + dropout(attention(norm(x)))
    x = x + dropout(W2 dropout(gelu(W1 norm(x))))

The two forecasting baselines differ only in where dropout sits, the norm (PatchTST: BatchNorm
over tokens; iTransformer: LayerNorm plus a final LayerNorm) and PatchTST's residual attention
(each layer adds the previous layer's pre-softmax scores, He et al. 2020 "RealFormer"): every
difference is an argument here. Tokens are whatever the model chooses: patches of one variate
(PatchTST), whole variates (iTransformer), image patches (ViT); tensors are (batch, tokens,
d_model) throughout.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mambamixer.layers.normalization import make_token_norm


class MultiheadSelfAttention(nn.Module):
    """Multi-head self-attention, (batch, tokens, d_model) -> (batch, tokens, d_model).

    ``attn_dropout`` drops attention probabilities, ``proj_dropout`` the output projection. With
    ``residual_scores`` the pre-softmax scores (batch, n_heads, tokens, tokens) are returned and the
    previous layer's are added before the softmax; otherwise the fused SDPA kernel is used.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        residual_scores: bool = False,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.attn_dropout = attn_dropout
        self.residual_scores = residual_scores
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.proj_dropout = nn.Dropout(proj_dropout)

    def forward(self, x: Tensor, prev_scores: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        batch, tokens, d_model = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.n_heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (batch, n_heads, tokens, head_dim)
        p = self.attn_dropout if self.training else 0.0
        if self.residual_scores:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (batch, n_heads, tokens, tokens)
            if prev_scores is not None:
                scores = scores + prev_scores
            out = F.dropout(scores.softmax(dim=-1), p, self.training) @ v
        else:
            scores = None
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        out = out.transpose(1, 2).reshape(batch, tokens, d_model)
        return self.proj_dropout(self.out_proj(out)), scores


class TransformerEncoderLayer(nn.Module):
    """Post-norm (``norm_first``: pre-norm) encoder layer, GELU feed-forward: (batch, tokens, d_model) -> same."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        norm: str = "layer",
        residual_scores: bool = False,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn = MultiheadSelfAttention(d_model, n_heads, attn_dropout, proj_dropout, residual_scores)
        self.norm_attn = make_token_norm(norm, d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )
        self.norm_ffn = make_token_norm(norm, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, prev_scores: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if self.norm_first:
            a, scores = self.attn(self.norm_attn(x), prev_scores)
            x = x + self.dropout(a)
            return x + self.dropout(self.ffn(self.norm_ffn(x))), scores
        a, scores = self.attn(x, prev_scores)
        x = self.norm_attn(x + self.dropout(a))
        x = self.norm_ffn(x + self.dropout(self.ffn(x)))
        return x, scores


class TransformerEncoder(nn.Module):
    """A stack of ``TransformerEncoderLayer``, optionally closed by a LayerNorm; (batch, tokens, d_model)."""

    def __init__(
        self,
        n_layers: int,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        norm: str = "layer",
        residual_scores: bool = False,
        final_norm: bool = False,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                d_model, n_heads, d_ff, dropout, attn_dropout, proj_dropout, norm, residual_scores, norm_first
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        scores = None
        for layer in self.layers:
            x, scores = layer(x, scores)
        return self.norm(x)
