"""PinSAGE neighbour sampling: DGL's sampler and a torch-native twin, both returning plain index tensors.

A movie's neighbours are the movies most often reached by short random walks with restart over the
bipartite graph (movie -> user -> movie, repeated), weighted by visit count (PinSage, Ying et al. 2018;
DGL's `PinSAGESampler`). `DGLPinSageSampler` calls DGL (CPU only, torch <= 2.2); `TorchPinSageSampler`
implements the same walks vectorised in torch so that training runs on a GPU box where DGL cannot load.
Both give `Blocks`, so the model never calls DGL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from recsys_tasks.config import ConfigError
from recsys_tasks.graph.arrays import GraphArrays


@dataclass(frozen=True)
class WalkParams:
    """DGL's example defaults: 2 traversals, restart 0.5, 10 walks, top 3 neighbours."""

    num_traversals: int = 2
    termination_prob: float = 0.5
    num_random_walks: int = 10
    num_neighbors: int = 3


@dataclass
class Layer:
    """Edges of one convolution: local src index (input nodes), local dst index (output nodes), weight.

    As in DGL blocks, the layer's output nodes are the first `n_dst` of its input nodes.
    """

    src: torch.Tensor
    dst: torch.Tensor
    weight: torch.Tensor
    n_dst: int


@dataclass
class Blocks:
    """Sampled neighbourhoods for `n_layers` convolutions; `input_nodes` are global movie indices."""

    input_nodes: torch.Tensor
    layers: list[Layer] = field(default_factory=list)

    @property
    def output_nodes(self) -> torch.Tensor:
        return self.input_nodes[: self.layers[-1].n_dst]

    def to(self, device: torch.device | str) -> Blocks:
        return Blocks(
            self.input_nodes.to(device),
            [Layer(x.src.to(device), x.dst.to(device), x.weight.to(device), x.n_dst) for x in self.layers],
        )


class Frontier(Protocol):
    n_movies: int
    device: torch.device  # where it samples: seeds go there, blocks come back from there

    def frontier(self, seeds: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(neighbour, seed movie, visit count) edges, global movie indices, for the given seed movies."""


def sample_blocks(
    sampler: Frontier, seeds: torch.Tensor, n_layers: int, seed: int, exclude: torch.Tensor | None = None
) -> Blocks:
    """Sample from the output layer inwards, as DGL's example does: each layer's inputs feed the one after.

    `exclude`: packed (neighbour * n_movies + movie) pairs whose edges are dropped from every layer, as
    DGL's example drops (query, positive) edges so that training cannot read a target off the graph.
    """
    layers: list[Layer] = []
    nodes = seeds
    for depth in range(n_layers):
        src, dst, weight = (
            t.to(nodes.device) for t in sampler.frontier(nodes, (seed * 1009 + depth) % 2**31)
        )
        if exclude is not None and len(exclude):
            keep = ~torch.isin(src * sampler.n_movies + dst, exclude.to(src.device))
            src, dst, weight = src[keep], dst[keep], weight[keep]
        mapping = torch.full((sampler.n_movies,), -1, dtype=torch.long, device=nodes.device)
        mapping[nodes] = torch.arange(len(nodes), device=nodes.device)
        new = torch.unique(src[mapping[src] < 0])
        mapping[new] = torch.arange(len(nodes), len(nodes) + len(new), device=nodes.device)
        layers.insert(0, Layer(mapping[src], mapping[dst], weight.float(), len(nodes)))
        nodes = torch.cat([nodes, new])
    return Blocks(nodes, layers)


class TorchPinSageSampler:
    """Random walks with restart over CSR tensors, all walks of all seeds advanced together (CPU or CUDA)."""

    def __init__(self, g: GraphArrays, params: WalkParams = WalkParams(), device: str | torch.device = "cpu"):
        self.p, self.device, self.n_movies = params, torch.device(device), g.n_movies
        self.m_ptr, self.m_users = _csr(g.movie_idx, g.user_idx, g.n_movies, self.device)
        self.u_ptr, self.u_movies = _csr(g.user_idx, g.movie_idx, g.n_users, self.device)

    def frontier(self, seeds: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device=self.device).manual_seed(seed)
        seeds = seeds.to(self.device)
        walks = self.p.num_random_walks
        cur = seeds.repeat_interleave(walks)
        alive = self.m_ptr[cur + 1] > self.m_ptr[cur]  # a movie nobody watched has no walks
        visits = []
        for hop in range(self.p.num_traversals):
            if hop > 0:  # restart (end the walk) before every traversal after the first
                alive &= torch.rand(len(cur), generator=gen, device=self.device) >= self.p.termination_prob
            users = _step(self.m_ptr, self.m_users, cur, gen)
            cur = torch.where(alive, _step(self.u_ptr, self.u_movies, users, gen), cur)
            visits.append(torch.where(alive, cur, -1))
        visited = torch.stack(visits, 1)
        owner = (
            torch.arange(len(seeds), device=self.device).repeat_interleave(walks)[:, None].expand_as(visited)
        )
        keep = visited >= 0
        pair, counts = torch.unique(owner[keep] * self.n_movies + visited[keep], return_counts=True)
        owner, neighbour = pair // self.n_movies, pair % self.n_movies
        # top-k by visit count within each seed; ties broken at random (one sort on a composite key)
        top = walks * self.p.num_traversals + 1
        key = (owner * top + (top - counts)).double() + 0.5 * torch.rand(
            len(pair), generator=gen, device=self.device, dtype=torch.float64
        )
        order = torch.argsort(key)
        owner, neighbour, counts = owner[order], neighbour[order], counts[order]
        starts = torch.searchsorted(owner, owner, right=False)
        rank = torch.arange(len(owner), device=self.device) - starts
        keep = rank < self.p.num_neighbors
        return neighbour[keep], seeds[owner[keep]], counts[keep].float()


def _csr(
    rows: np.ndarray, cols: np.ndarray, n_rows: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    order = np.argsort(rows, kind="stable")
    ptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=ptr[1:])
    return torch.tensor(ptr, device=device), torch.tensor(cols[order], dtype=torch.long, device=device)


def _step(ptr: torch.Tensor, idx: torch.Tensor, nodes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One uniform random hop from each node (nodes without edges stay put; callers mask them)."""
    start, deg = ptr[nodes], ptr[nodes + 1] - ptr[nodes]
    offset = (torch.rand(len(nodes), generator=gen, device=nodes.device) * deg).long()
    return idx[torch.clamp(start + torch.minimum(offset, deg - 1).clamp(min=0), max=max(len(idx) - 1, 0))]


class DGLPinSageSampler:
    """DGL's `PinSAGESampler` on the CPU (the reference the torch sampler is tested against)."""

    def __init__(self, g: GraphArrays, params: WalkParams = WalkParams()):
        os.environ.setdefault("DGLBACKEND", "pytorch")
        import dgl

        from recsys_tasks.graph.build import to_dgl

        self.dgl, self.n_movies, self.device = dgl, g.n_movies, torch.device("cpu")
        self.sampler = dgl.sampling.PinSAGESampler(
            to_dgl(g, dgl, torch),
            "movie",
            "user",
            params.num_traversals,
            params.termination_prob,
            params.num_random_walks,
            params.num_neighbors,
        )

    def frontier(self, seeds: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.dgl.seed(seed)
        fg = self.sampler(seeds.cpu())
        src, dst = fg.edges()
        return src.long(), dst.long(), fg.edata["weights"].float()


def dgl_available() -> bool:
    os.environ.setdefault("DGLBACKEND", "pytorch")
    try:
        import dgl  # noqa: F401
    except Exception:  # noqa: BLE001 - an unsupported torch breaks DGL's import in several ways
        return False
    return True


def resolve_sampler(name: str) -> str:
    """'auto' becomes the sampler actually used (DGL when it loads, else torch), once, so that the train
    step's key and model_version name it; 'dgl' where DGL cannot load is a configuration error."""
    if name == "auto":
        return "dgl" if dgl_available() else "torch"
    if name == "dgl" and not dgl_available():
        raise ConfigError("sampler: 'dgl' was requested but DGL cannot be imported here (use torch or auto)")
    return name


def make_sampler(
    name: str, g: GraphArrays, device: torch.device, params: WalkParams = WalkParams()
) -> Frontier:
    """'dgl', 'torch', or 'auto' (see resolve_sampler). DGL samples on the CPU, whatever the training
    device."""
    name = resolve_sampler(name)
    if name == "dgl":
        return DGLPinSageSampler(g, params)
    if name == "torch":
        return TorchPinSageSampler(g, params, device)
    raise ValueError(f"unknown sampler {name!r}")
