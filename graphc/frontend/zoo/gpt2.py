"""A GPT-2-style decoder-only Transformer, after Radford et al. 2019 ("Language Models are
Unsupervised Multitask Learners") and the GPT of Radford et al. 2018.

Token and position embeddings, ``n_layer`` pre-LayerNorm blocks (causal self-attention and a 4x MLP
with GELU, each with a residual connection), a final LayerNorm and a language-model head tied to the
token embedding. GPT-2 small is 12 x 768 (124M parameters), GPT-2 XL 48 x 1600 (1.56B): the network
that pipeline and tensor-parallel placement work (GPipe, PipeDream-2BW, Megatron) is judged on.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from graphc.frontend.leaf import leaf_module
from graphc.ir.errors import ConfigurationError


@leaf_module
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with fused QKV projection, via scaled_dot_product_attention.

    A leaf at module granularity: the QKV projection, the attention and the output projection of one
    block form one node of the cost graph.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ConfigurationError(f"gpt2: n_embd={n_embd} is not a multiple of n_head={n_head}")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        heads = self.c_attn(x).unflatten(-1, (3, self.n_head, self.head_dim))
        q, k, v = heads.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, n_head, T, head_dim)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).flatten(2)))


@leaf_module
class MLP(nn.Module):
    """Position-wise feed-forward network: Linear to 4x width, GELU (tanh form, as GPT-2), Linear back."""

    def __init__(self, n_embd: int, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One pre-LayerNorm Transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """GPT-2 language model: token ids (B, T) -> next-token logits (B, T, vocab_size).

    ``n_positions`` is the size of the position table (the context length); inputs may be shorter.
    Weights follow GPT-2's initialisation: normal(0, 0.02), residual projections scaled by
    1/sqrt(2 n_layer), zero biases. The LM head shares its weight with the token embedding.
    """

    def __init__(
        self,
        vocab_size: int = 50257,
        n_layer: int = 12,
        n_embd: int = 768,
        n_head: int = 12,
        n_positions: int = 1024,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self._init_weights(n_layer)

    def _init_weights(self, n_layer: int) -> None:
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module is not self.lm_head:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(positions))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))
