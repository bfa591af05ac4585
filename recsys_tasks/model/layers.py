"""PinSage building blocks in plain PyTorch (after DGL's examples/pytorch/pinsage/layers.py).

They read sampled neighbourhoods as index tensors (`recsys_tasks.graph.sampler.Layer`), so the model
runs on any device the installed torch supports, with or without DGL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys_tasks.graph.sampler import Layer

YEAR_MIN, YEAR_STEP, YEAR_BUCKETS = 1900, 5, 26  # 5-year buckets 1900..2029; bucket 0 = unknown year


def year_bucket(year: torch.Tensor) -> torch.Tensor:
    bucket = ((year.long() - YEAR_MIN) // YEAR_STEP + 1).clamp(1, YEAR_BUCKETS - 1)
    return torch.where(year > 0, bucket, torch.zeros_like(bucket))


class MovieProjector(nn.Module):
    """Movie features to one vector: year bucket + genres + title bag of words + a learnable id embedding.

    Movies nobody rated in train get no id embedding (it would never be trained), so their vector is
    feature-only, which is what lets cold movies be served at all.
    """

    def __init__(self, n_movies: int, n_genres: int, n_tokens: int, dim: int) -> None:
        super().__init__()
        self.year = nn.Embedding(YEAR_BUCKETS, dim)
        self.genres = nn.Linear(n_genres, dim)
        self.title = nn.EmbeddingBag(n_tokens, dim, mode="mean", padding_idx=0)
        self.ident = nn.Embedding(n_movies, dim)
        nn.init.normal_(self.ident.weight, std=0.1)

    def forward(
        self,
        nodes: torch.Tensor,
        year: torch.Tensor,
        genres: torch.Tensor,
        title: torch.Tensor,
        rated: torch.Tensor,
    ) -> torch.Tensor:
        ident = self.ident(nodes) * rated[nodes, None]
        return (
            self.year(year_bucket(year[nodes]))
            + self.genres(genres[nodes])
            + self.title(title[nodes])
            + ident
        )


class WeightedSAGEConv(nn.Module):
    """h_dst' = normalise(relu(W [h_dst ; sum_w relu(Q h_src) / sum_w])), w = random-walk visit counts."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.q = nn.Linear(in_dim, hidden_dim)
        self.w = nn.Linear(in_dim + hidden_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_uniform_(self.q.weight, gain=gain)
        nn.init.xavier_uniform_(self.w.weight, gain=gain)
        nn.init.zeros_(self.q.bias)
        nn.init.zeros_(self.w.bias)

    def forward(self, layer: Layer, h_src: torch.Tensor) -> torch.Tensor:
        h_dst = h_src[: layer.n_dst]
        msg = F.relu(self.q(self.dropout(h_src)))[layer.src] * layer.weight[:, None].to(h_src.dtype)
        total = torch.zeros(layer.n_dst, msg.shape[1], dtype=msg.dtype, device=msg.device)
        total = total.index_add(0, layer.dst, msg)
        wsum = torch.zeros(layer.n_dst, dtype=msg.dtype, device=msg.device).index_add(
            0, layer.dst, layer.weight.to(msg.dtype)
        )
        neigh = total / wsum.clamp(min=1.0)[:, None]  # a movie without neighbours aggregates zeros
        z = F.relu(self.w(self.dropout(torch.cat([h_dst, neigh], dim=1))))
        norm = z.norm(dim=1, keepdim=True)
        return z / torch.where(norm == 0, torch.ones_like(norm), norm)
