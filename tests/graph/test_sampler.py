"""PinSAGE neighbour sampling: the torch sampler's walks are real, and it agrees with DGL's sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_tasks.config import ConfigError
from recsys_tasks.graph import sampler as sampler_mod
from recsys_tasks.graph.arrays import GraphArrays
from recsys_tasks.graph.build import graph_arrays
from recsys_tasks.graph.sampler import (
    DGLPinSageSampler,
    TorchPinSageSampler,
    WalkParams,
    make_sampler,
    resolve_sampler,
    sample_blocks,
)
from tests.graph.test_graph_build import write_planted


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> GraphArrays:
    torch.set_num_threads(1)
    return graph_arrays(write_planted(tmp_path_factory.mktemp("pre"), n_users=150).path)


def selection_counts(sampler, g: GraphArrays, draws: int) -> tuple[np.ndarray, float]:
    """How often each movie was picked as each seed's neighbour over `draws` samples; mean weight."""
    freq, weights = np.zeros((g.n_movies, g.n_movies)), []
    for draw in range(draws):
        src, dst, w = sampler.frontier(torch.arange(g.n_movies), draw)
        np.add.at(freq, (dst.numpy(), src.numpy()), 1)
        weights.append(float(w.mean()))
    return freq, float(np.mean(weights))


def test_torch_walks_follow_co_watching_and_keep_top_k(planted: GraphArrays) -> None:
    g = planted
    watched = np.zeros((g.n_users, g.n_movies))
    watched[g.user_idx, g.movie_idx] = 1
    co_watched = watched.T @ watched > 0
    sampler = TorchPinSageSampler(g, WalkParams(num_traversals=1, num_random_walks=20, num_neighbors=3))
    src, dst, w = sampler.frontier(torch.arange(g.n_movies), seed=7)
    assert co_watched[dst.numpy(), src.numpy()].all()  # one traversal: movie -> user -> movie
    assert np.bincount(dst.numpy(), minlength=g.n_movies).max() == 3
    assert not np.isin(dst.numpy(), np.flatnonzero(g.movie_degree() == 0)).any()  # unrated: no neighbours
    assert (w >= 1).all() and float(w.sum()) <= 20 * g.n_movies
    again = sampler.frontier(torch.arange(g.n_movies), seed=7)
    assert all(torch.equal(a, b) for a, b in zip((src, dst, w), again))
    assert not torch.equal(sampler.frontier(torch.arange(g.n_movies), seed=8)[0], src)


def clustered_graph(n_users: int = 300, n_movies: int = 60, per_user: int = 15) -> GraphArrays:
    """Three taste clusters with skewed popularity: visit counts differ a lot between neighbours."""
    rng = np.random.default_rng(0)
    cluster, pop = np.arange(n_movies) % 3, 1.0 / (1 + rng.permutation(n_movies)) ** 0.8
    users, movies = [], []
    for u in range(n_users):
        p = pop * np.where(cluster == u % 3, 1.0, 0.05)
        movies += rng.choice(n_movies, per_user, replace=False, p=p / p.sum()).tolist()
        users += [u] * per_user
    u, m = np.array(users), np.array(movies)
    return GraphArrays(
        u,
        m,
        np.ones(len(u), np.float32),
        np.arange(len(u)),
        np.arange(n_movies),
        np.arange(n_users),
        np.zeros(n_movies, np.int32),
        np.zeros((n_movies, 1), np.float32),
        np.zeros((n_movies, 8), np.int64),
    )


def test_dgl_and_torch_samplers_agree() -> None:
    # Visit counts of all reached movies (num_neighbors above the catalog size keeps them all) estimate the
    # walk distribution; 5,000 walks per movie make the estimates tight enough to compare.
    g = clustered_graph()
    high = np.argsort(-g.movie_degree())[:20]
    every = WalkParams(num_random_walks=1000, num_neighbors=10_000)
    v_dgl = visit_counts(DGLPinSageSampler(g, every), g, 5)[high]
    v_torch = visit_counts(TorchPinSageSampler(g, every), g, 5)[high]
    assert v_torch.sum() / v_dgl.sum() == pytest.approx(1.0, abs=0.02)  # walk lengths: restarts agree
    shorter = visit_counts(TorchPinSageSampler(g, WalkParams(1, 0.5, 1000, 10_000)), g, 5)[high]
    assert shorter.sum() / v_dgl.sum() < 0.8  # ... which a one-traversal walk would not
    p_dgl, p_torch = (v / v.sum(1, keepdims=True) for v in (v_dgl, v_torch))
    assert 0.5 * np.abs(p_dgl - p_torch).sum(1).mean() < 0.06  # where the walks go
    for row, movie in enumerate(high):  # the top neighbours by visit frequency (the movie itself aside)
        p_dgl[row, movie] = p_torch[row, movie] = -1
    overlap = [len(set(np.argsort(-a)[:3]) & set(np.argsort(-b)[:3])) for a, b in zip(p_dgl, p_torch)]
    assert np.mean(overlap) >= 2.0, overlap
    # at DGL's defaults (top 3 of 10 walks) the selected neighbours' weights match too
    _, w_dgl = selection_counts(DGLPinSageSampler(g), g, 30)
    _, w_torch = selection_counts(TorchPinSageSampler(g), g, 30)
    assert w_torch / w_dgl == pytest.approx(1.0, abs=0.05)


def visit_counts(sampler, g: GraphArrays, draws: int) -> np.ndarray:
    counts = np.zeros((g.n_movies, g.n_movies))
    for draw in range(draws):
        src, dst, w = sampler.frontier(torch.arange(g.n_movies), draw)
        np.add.at(counts, (dst.numpy(), src.numpy()), w.numpy())
    return counts


def test_top_k_keeps_the_most_visited(planted: GraphArrays) -> None:
    seeds = torch.arange(planted.n_movies)
    every = TorchPinSageSampler(planted, WalkParams(num_neighbors=10_000)).frontier(seeds, 3)
    top = TorchPinSageSampler(planted, WalkParams(num_neighbors=3)).frontier(seeds, 3)  # the same walks
    for movie in range(planted.n_movies):
        counts = np.sort(every[2][every[1] == movie].numpy())[::-1]
        assert np.array_equal(np.sort(top[2][top[1] == movie].numpy())[::-1], counts[:3])


@pytest.mark.parametrize("name", ["torch", "dgl"])
def test_blocks_nest_like_dgl_blocks(planted: GraphArrays, name: str) -> None:
    seeds = torch.tensor([3, 0, 17])
    blocks = sample_blocks(make_sampler(name, planted, torch.device("cpu")), seeds, 2, seed=1)
    assert torch.equal(blocks.output_nodes, seeds)
    assert len(blocks.input_nodes) == len(torch.unique(blocks.input_nodes))
    n_in = len(blocks.input_nodes)
    for layer in blocks.layers:  # inputs of layer i+1 are the outputs of layer i (a prefix of its inputs)
        assert int(layer.src.max()) < n_in and int(layer.dst.max()) < layer.n_dst <= n_in
        n_in = layer.n_dst
    assert blocks.layers[-1].n_dst == 3
    again = sample_blocks(make_sampler(name, planted, torch.device("cpu")), seeds, 2, seed=1)
    assert torch.equal(again.input_nodes, blocks.input_nodes)  # seeded: the same sample again
    big = sample_blocks(make_sampler(name, planted, torch.device("cpu")), seeds, 2, seed=2**31 - 1)
    assert torch.equal(big.output_nodes, seeds)


@pytest.mark.parametrize("name", ["torch", "dgl"])
def test_excluded_pairs_never_appear_in_any_layer(planted: GraphArrays, name: str) -> None:
    seeds = torch.arange(planted.n_movies)
    sampler = make_sampler(name, planted, torch.device("cpu"))
    full = sample_blocks(sampler, seeds, 2, seed=4)
    src, dst = (full.input_nodes[full.layers[-1].src], full.input_nodes[full.layers[-1].dst])
    pairs = torch.stack([src[:5], dst[:5]], 1)  # five edges the unrestricted sample has
    m = planted.n_movies
    exclude = torch.cat([pairs[:, 0] * m + pairs[:, 1], pairs[:, 1] * m + pairs[:, 0]])
    blocks = sample_blocks(sampler, seeds, 2, seed=4, exclude=exclude)
    for layer in blocks.layers:
        edges = blocks.input_nodes[layer.src] * m + blocks.input_nodes[layer.dst]
        assert not torch.isin(edges, exclude).any()
    assert torch.equal(blocks.output_nodes, seeds)


def test_auto_resolves_to_the_sampler_used_and_dgl_without_dgl_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_sampler("auto") == ("dgl" if sampler_mod.dgl_available() else "torch")
    assert resolve_sampler("torch") == "torch"
    monkeypatch.setattr(sampler_mod, "dgl_available", lambda: False)  # as on a GPU box with a newer torch
    assert resolve_sampler("auto") == "torch"
    with pytest.raises(ConfigError, match="'dgl' was requested but DGL cannot be imported"):
        resolve_sampler("dgl")
