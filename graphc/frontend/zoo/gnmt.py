"""A GNMT-style LSTM encoder-decoder with attention, after Wu et al. 2016 ("Google's Neural Machine
Translation System: Bridging the Gap between Human and Machine Translation").

Encoder: embedding, a bidirectional LSTM bottom layer, then unidirectional LSTM layers, with residual
connections from the third layer up. Decoder: embedding and a stack of LSTM cells run by a Python loop
over the target steps, so that a trace unrolls the recurrence into one node per step and layer, as the
TensorFlow graphs of the placement papers (Mirhoseini et al. 2017, PipeDream) did. At every step the
bottom decoder layer's previous output queries an attention over the encoder outputs, and the context
is fed to every decoder layer; a linear classifier turns each step's top output into logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from graphc.frontend.leaf import leaf_module
from graphc.ir.errors import ConfigurationError

ATTENTION_KINDS = ("additive", "dot")


@leaf_module
class Attention(nn.Module):
    """One attention step: scores of a query against the encoder keys, softmax, weighted sum of values.

    ``additive`` is the one-hidden-layer network of Bahdanau et al. 2015 that GNMT uses,
    ``v . tanh(W q + K)``, with the key projection ``K`` computed once per sentence by the decoder;
    ``dot`` is the parameter-free ``q . k`` of Luong et al. 2015. A leaf at module granularity, so a
    placement sees each step's attention as one node.
    """

    def __init__(self, hidden_size: int, kind: str = "additive") -> None:
        super().__init__()
        if kind not in ATTENTION_KINDS:
            raise ConfigurationError(f"gnmt: attention must be one of {ATTENTION_KINDS}, got {kind!r}")
        self.kind = kind
        self.query = nn.Linear(hidden_size, hidden_size) if kind == "additive" else None
        self.v = nn.Linear(hidden_size, 1, bias=False) if kind == "additive" else None

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``query`` (B, H), ``keys`` and ``values`` (B, S, H) -> context (B, H)."""
        if self.query is not None and self.v is not None:
            scores = self.v(torch.tanh(keys + self.query(query).unsqueeze(1))).squeeze(-1)
        else:
            scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights.unsqueeze(1), values).squeeze(1)


class Encoder(nn.Module):
    """Embedding, bidirectional bottom LSTM, unidirectional LSTMs with residuals from layer 3."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        layers = [nn.LSTM(hidden_size, hidden_size, batch_first=True, bidirectional=True)]
        layers += [
            nn.LSTM(2 * hidden_size if i == 1 else hidden_size, hidden_size, batch_first=True)
            for i in range(1, num_layers)
        ]
        self.layers = nn.ModuleList(layers)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        """Token ids (B, S) -> encoder outputs (B, S, H)."""
        x = self.embedding(source)
        for index, lstm in enumerate(self.layers):
            out = lstm(self.dropout(x))[0]
            x = out + x if index >= 2 else out
        return x


class Decoder(nn.Module):
    """Embedding, attention and a stack of LSTM cells unrolled over ``target_len`` steps."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int,
        target_len: int,
        attention: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.target_len = target_len
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.key_proj = nn.Linear(hidden_size, hidden_size, bias=False) if attention == "additive" else None
        self.attention = Attention(hidden_size, attention)
        self.dropout = nn.Dropout(dropout)
        self.cells = nn.ModuleList(nn.LSTMCell(2 * hidden_size, hidden_size) for _ in range(num_layers))
        self.classifier = nn.Linear(hidden_size, vocab_size)

    def forward(self, target: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) fed by teacher forcing and encoder outputs (B, S, H) -> logits (B, T, V)."""
        embedded = self.embedding(target)
        keys = self.key_proj(memory) if self.key_proj is not None else memory
        zeros = memory.new_zeros(memory.shape[0], self.hidden_size)
        states = [(zeros, zeros) for _ in self.cells]
        logits = []
        for step in range(self.target_len):
            context = self.attention(states[0][0], keys, memory)
            x = embedded[:, step]
            for index, cell in enumerate(self.cells):
                states[index] = cell(self.dropout(torch.cat([x, context], dim=-1)), states[index])
                x = states[index][0] + x if index >= 2 else states[index][0]
            logits.append(self.classifier(x))
        return torch.stack(logits, dim=1)


class GNMT(nn.Module):
    """GNMT-style translation model: ``(source ids (B, S), target ids (B, T)) -> logits (B, T, V)``.

    ``num_layers`` counts encoder layers (the bidirectional one included) and decoder layers alike;
    ``target_len`` fixes the number of unrolled decoder steps, so the target must have that length.
    ``source_len`` only sets the example input (the encoder LSTMs take any length).
    """

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 1024,
        num_layers: int = 4,
        source_len: int = 50,
        target_len: int = 50,
        attention: str = "additive",
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if num_layers < 2:
            raise ConfigurationError(f"gnmt: num_layers must be at least 2, got {num_layers}")
        if source_len < 1 or target_len < 1:
            raise ConfigurationError(f"gnmt: lengths must be positive, got {source_len} and {target_len}")
        self.encoder = Encoder(vocab_size, hidden_size, num_layers, dropout)
        self.decoder = Decoder(vocab_size, hidden_size, num_layers, target_len, attention, dropout)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.decoder(target, self.encoder(source))
