"""The baselines on real ml-1m reproduce the issue author's figures under the same protocol (about 5 s)."""

from __future__ import annotations

import pytest

from recsys_tasks.data.formats import find_release, read_release
from recsys_tasks.data.preprocess import split_ratings
from recsys_tasks.model.evaluate import evaluate_split
from tests.conftest import real_release

# Test HR@10 measured by the issue author; ours: 0.0348, 0.1379, 0.2068 (see bench/baselines_ml1m.py).
REFERENCE = {"popularity": 0.035, "itemknn": 0.138, "transitions": 0.201}


def test_ml1m_baselines_match_the_reference() -> None:
    tables = read_release(find_release(real_release("ml-1m")))
    split = {name: t.to_pandas() for name, t in split_ratings(tables.ratings).items()}
    metrics, counts = evaluate_split(split["train"], split["val"], split["test"],
                                     tables.movies["movie_id"].to_numpy(), None)
    assert counts == {"users": 6040, "skipped_rewatches": 0, "movies": 3883}
    for method, hr in REFERENCE.items():
        assert metrics[method]["hr@10"] == pytest.approx(hr, abs=0.007), method
    assert metrics["popularity"]["hr@10"] < metrics["itemknn"]["hr@10"] < metrics["transitions"]["hr@10"]
