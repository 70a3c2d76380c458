"""Models written as their users write them, for the tests of tracing and compiling: a tiny BERT as
HuggingFace writes it (keyword inputs, an attention mask, residual adds in place or not) and a tiny
ResNet as torchvision writes it (``ReLU(inplace=True)``, ``out += identity``, batch norm)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# -- a tiny BERT, written as HuggingFace writes it --------------------------------------------------


class TinyBertEmbeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, max_positions: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.LayerNorm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(0.0)
        self.register_buffer("position_ids", torch.arange(max_positions).expand((1, -1)), persistent=False)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings += self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(embeddings))


class TinyBertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, inplace_residual: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden)
        self.intermediate = nn.Linear(hidden, 2 * hidden)
        self.output = nn.Linear(2 * hidden, hidden)
        self.output_norm = nn.LayerNorm(hidden)
        self.inplace_residual = inplace_residual

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).permute(0, 2, 1, 3)

    def _residual(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.inplace_residual:
            hidden += residual
            return hidden
        return hidden + residual

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split_heads(f(hidden)) for f in (self.query, self.key, self.value))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + attention_mask
        context = (scores.softmax(dim=-1) @ v).permute(0, 2, 1, 3).reshape(hidden.shape)
        attended = self.attention_norm(self._residual(self.attention_output(context), hidden))
        out = self.output(F.gelu(self.intermediate(attended)))
        return self.output_norm(self._residual(out, attended))


class TinyBert(nn.Module):
    def __init__(self, inplace_residual: bool = False, vocab: int = 50, hidden: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.embeddings = TinyBertEmbeddings(vocab, hidden, max_positions=16)
        self.layers = nn.ModuleList(TinyBertLayer(hidden, 2, inplace_residual) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        hidden = self.embeddings(input_ids, token_type_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.layers:
            hidden = layer(hidden, additive)
        pooled = torch.tanh(self.pooler(hidden[:, 0]))
        return {"last_hidden_state": hidden, "pooler_output": pooled} if return_dict else (hidden, pooled)


def bert_call() -> dict[str, Any]:
    torch.manual_seed(1)
    input_ids = torch.randint(0, 50, (2, 6))
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    token_type_ids = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


# -- a tiny ResNet, written as torchvision writes it ------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)) if stride != 1 else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.dropout = nn.Dropout(0.0, inplace=True)
        self.fc = nn.Linear(16, classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(pixel_values)))
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def resnet_call() -> dict[str, Any]:
    torch.manual_seed(2)
    return {"pixel_values": torch.randn(2, 3, 8, 8)}
