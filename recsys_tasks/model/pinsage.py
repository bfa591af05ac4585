"""The PinSage movie encoder: projected features, weighted SAGE convolutions, L2-normalised output.

Scores are dot products of unit vectors, so Milvus' inner-product search on the exported vectors
ranks exactly as the model does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys_tasks.graph.arrays import GraphArrays
from recsys_tasks.graph.sampler import Blocks
from recsys_tasks.model.layers import MovieProjector, WeightedSAGEConv

N_LAYERS = 2


class PinSage(nn.Module):
    def __init__(self, g: GraphArrays, dim: int, n_layers: int = N_LAYERS, dropout: float = 0.1) -> None:
        super().__init__()
        n_tokens = int(g.title_tokens.max()) + 1 if g.title_tokens.size else 1
        self.proj = MovieProjector(g.n_movies, g.genres.shape[1], max(n_tokens, 2), dim)
        self.n_layers = n_layers
        self.convs = nn.ModuleList(WeightedSAGEConv(dim, dim, dim, dropout) for _ in range(n_layers))
        # features live on the model's device as buffers (not parameters): moved by .to(), saved in model.pt
        self.register_buffer("year", torch.tensor(g.year, dtype=torch.long))
        self.register_buffer("genres", torch.tensor(g.genres, dtype=torch.float32))
        self.register_buffer("title", torch.tensor(g.title_tokens, dtype=torch.long))
        self.register_buffer("rated", torch.tensor(g.movie_degree() > 0, dtype=torch.float32))

    def project(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.proj(nodes, self.year, self.genres, self.title, self.rated)

    def forward(self, blocks: Blocks) -> torch.Tensor:
        """Unit vectors for blocks.output_nodes: own features plus the convolved neighbourhood (skip sum)."""
        h = self.project(blocks.input_nodes)
        for conv, layer in zip(self.convs, blocks.layers):
            h = conv(layer, h)
        out = self.project(blocks.output_nodes) + h
        return F.normalize(out.float(), dim=1)

    @torch.no_grad()
    def embed(self, blocks: Blocks) -> np.ndarray:
        self.eval()
        return self(blocks).cpu().numpy().astype(np.float32)
