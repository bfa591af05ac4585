"""Chunked evaluation: the same figures in tiny chunks as in one pass, on the real ml-100k."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_tasks.data.formats import find_release, read_release
from recsys_tasks.data.preprocess import split_ratings
from recsys_tasks.model.evaluate import (
    METHODS,
    default_chunk,
    evaluate_frames,
    heldout_from,
    loo_frames,
    rank_users,
)
from tests.conftest import real_release


@pytest.fixture(scope="module")
def ml100k() -> tuple[dict, np.ndarray]:
    tables = read_release(find_release(real_release("ml-100k")))
    split = {name: t.to_pandas() for name, t in split_ratings(tables.ratings).items()}
    return split, np.sort(tables.movies["movie_id"].to_numpy())


def test_tiny_chunks_give_the_figures_of_one_pass(ml100k) -> None:
    split, movie_ids = ml100k
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(movie_ids), 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    rule = {"name": "history", "weights": [0.5, 0.3, 0.2]}
    assert default_chunk(len(movie_ids)) > 943  # the default is one chunk for ml-100k: the unchunked path
    one = evaluate_frames(split, movie_ids, emb, rule)
    tiny = evaluate_frames(split, movie_ids, emb, rule, chunk_users=7)
    for split_name in ("val", "test"):
        assert list(one["metrics"][split_name]) == list(METHODS)
        assert tiny["metrics"][split_name] == one["metrics"][split_name]
        assert tiny["protocols"]["time_split"]["metrics"][split_name] == \
            one["protocols"]["time_split"]["metrics"][split_name]
    assert one["metrics"]["test"]["itemknn"]["hr@10"] == pytest.approx(0.1400, abs=5e-5)  # as before chunking


def test_a_scorer_is_never_asked_for_more_than_a_chunk(ml100k) -> None:
    split, movie_ids = ml100k
    h = heldout_from(*loo_frames(split, "test"), movie_ids)
    asked = []

    def scores(lo: int, hi: int) -> np.ndarray:
        asked.append((lo, hi))
        return np.zeros((hi - lo, h.n_movies))

    ranks = rank_users(h, scores, chunk_users=100)
    assert max(hi - lo for lo, hi in asked) == 100 and asked[-1][1] == h.n_users == len(ranks)
    assert [lo for lo, _ in asked] == list(range(0, h.n_users, 100))
