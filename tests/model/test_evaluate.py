"""evaluate: the protocols on hand-built splits, score_vectors, and the step end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_tasks.artifacts import StepResult, run_step, write_json
from recsys_tasks.errors import InputError
from recsys_tasks.model.evaluate import (
    BASELINES,
    LATEST_RULE,
    METHODS,
    SERVED,
    Baselines,
    evaluate,
    evaluate_frames,
    heldout_from,
    leave_one_out,
    loo_frames,
    score_rule,
    score_vectors,
    time_cutoffs,
    time_split,
)
from recsys_tasks.model.metrics import METRIC_KEYS

COLS = ["user_id", "movie_id", "timestamp"]


def frame(rows: list[tuple[int, int, int]], name: str = "") -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLS).astype("int64")
    if name:
        df.attrs["file"] = name
    return df


def baseline_split() -> dict[str, pd.DataFrame]:
    """Catalog 10..60. User 9: history 40 then val 10 (the latest); test 20.

    Train popularity: 30 (5) > 10 (3) > 20 (2). 20 followed 10 twice, 30 once; 10 is co-watched with
    20 by 2 of its 3 watchers, with 30 by 1. User 8 re-watches 30 in test: skipped.
    """
    train = frame([(1, 10, 1), (1, 20, 2), (2, 10, 1), (2, 20, 2), (3, 10, 1), (3, 30, 2),
                   (4, 30, 1), (5, 30, 1), (6, 30, 1), (9, 40, 1), (8, 30, 1)])
    val = frame([(9, 10, 5), (8, 20, 2)])
    test = frame([(9, 20, 9), (8, 30, 3)])
    return {"train": train, "val": val, "test": test}


CATALOG = np.array([10, 20, 30, 40, 50, 60], dtype=np.int64)


def test_baselines_on_a_hand_built_split() -> None:
    frames = baseline_split()
    h = heldout_from(*loo_frames(frames, "test"), CATALOG)
    assert (h.n_users, h.skipped_rewatches, h.user_ids.tolist()) == (1, 1, [9])
    assert h.items.tolist() == [3, 0] and h.targets.tolist() == [1]  # 40 then the val movie 10, oldest first
    got = Baselines.fit(frames["train"], CATALOG, h.latest).score(h)
    assert set(got) == set(BASELINES)
    # Popularity: 30 then 20 among the unseen (10 and 40 are in the history).
    assert got["popularity"]["mrr"] == pytest.approx(0.5)
    assert got["popularity"]["ndcg@10"] == pytest.approx(1 / math.log2(3))
    # From the val movie 10 (the latest): 20 is its most frequent successor and most co-watched movie.
    assert got["transitions"]["mrr"] == 1.0
    assert got["itemknn"]["mrr"] == 1.0
    # On validation the latest movie is 40 (user 9's only train movie): nothing follows or co-occurs with it.
    hv = heldout_from(*loo_frames(frames, "val"), CATALOG)
    assert hv.user_ids.tolist() == [8, 9] and hv.targets.tolist() == [1, 0]
    val = Baselines.fit(frames["train"], CATALOG, hv.latest).score(hv)
    # User 8 (history 30, target 20): 30 -> nothing in train; by popularity 10 (3) precedes 20 (2).
    # User 9 (history 40, target 10): 30 precedes 10 by popularity.
    assert val["transitions"]["mrr"] == pytest.approx((1 / 2 + 1 / 2) / 2)


@pytest.mark.parametrize(("extra_test", "message"), [
    ((1, 99, 9), r"movie_id 99 .*\(file test.parquet, row 2, rule movie_in_catalog"),
    ((9, 30, 9), r"user 9 has more than one held-out row \(file test.parquet, row 2, rule one_heldout_row_per_user"),
    ((7, 30, 9), r"user 7 .* no history \(file test.parquet, row 2, rule heldout_user_has_history"),
])
def test_bad_heldout_rows_are_input_errors(extra_test: tuple[int, int, int], message: str) -> None:
    frames = baseline_split()
    frames["test"] = pd.concat([frames["test"], frame([extra_test])], ignore_index=True)
    frames["test"].attrs["file"] = "test.parquet"
    with pytest.raises(InputError, match=message):
        heldout_from(*loo_frames(frames, "test"), CATALOG)


def test_an_empty_or_rewatch_only_split_is_an_input_error() -> None:
    frames = baseline_split()
    history, test = loo_frames(frames, "test")
    with pytest.raises(InputError, match="rule split_not_empty"):
        heldout_from(history, test.iloc[:0], CATALOG)
    with pytest.raises(InputError, match="rule split_not_only_rewatches"):
        heldout_from(history, test.iloc[1:], CATALOG)


# ---- the model rules, score_vectors and the step: movies 1..6 (index 0..5) -------------------------
def unit(v: list[float]) -> list[float]:
    return (np.asarray(v) / np.linalg.norm(v)).tolist()


# Each of 0, 2, 1 has one close neighbour (5, 3, 4).
EMB = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], unit([0, 1, 0, 0.2]),
                unit([0, 0, 1, 0.2]), unit([1, 0, 0, 0.2])], dtype=np.float32)
# User 1: 1, 2, val 3 (latest, index 2) -> test 4 (index 3). User 2: 2, 5 (the same second: by movie id),
# val 1 (index 0) -> test 6 (index 5). Rows out of order: the history is sorted by (timestamp, movie id).
TRAIN = [(1, 2, 20), (2, 5, 10), (1, 1, 10), (2, 2, 10), (3, 5, 10), (3, 6, 20)]
VAL = [(1, 3, 30), (2, 1, 30)]
TEST = [(1, 4, 40), (2, 6, 40)]
# Weight only on the third-newest movie (the oldest here): user 1 queries with 1 (index 0), user 2 with 2
# (index 1); read newest -> oldest by mistake, it would be DGL's rule.
RULE = {"name": "history", "weights": [0.0, 0.0, 1.0]}
# The step's rule must be defined on two-movie validation histories: the second-newest movie only.
STEP_RULE = {"name": "history", "weights": [0.0, 1.0]}
IDS = np.arange(1, 7, dtype=np.int64)


def test_score_rule_latest_and_history_on_test() -> None:
    frames = {"train": frame(TRAIN), "val": frame(VAL), "test": frame(TEST)}
    h = heldout_from(*loo_frames(frames, "test"), IDS)
    assert h.items.tolist() == [0, 1, 2, 1, 4, 0]  # user 2: 2 and 5 share second 10, by movie id
    # The latest movie's nearest unseen neighbour is each user's test movie.
    latest = score_rule(h, EMB, LATEST_RULE)
    assert latest["mrr"] == 1.0 and latest["users"] == 2 and set(latest) == {*METRIC_KEYS, "users"}
    # User 1's query (index 0) puts index 5 first and ties the target with index 4 -> rank 3 of 3 unseen;
    # user 2's (index 1) scores all 3 unseen at 0 -> rank 3.
    assert score_rule(h, EMB, RULE)["mrr"] == pytest.approx(1 / 3)


def fake_step(root: Path, name: str, files: dict[str, object], facts: dict | None = None,
              tag: str = "") -> StepResult:
    """A finished upstream step folder holding `files` (the contract formats), made by run_step."""

    def build(tmp: Path) -> dict:
        for fname, obj in files.items():
            if isinstance(obj, pd.DataFrame):
                obj.to_parquet(tmp / fname, index=False)
            elif fname.endswith(".npz"):
                np.savez(tmp / fname, **obj)
            elif fname.endswith(".npy"):
                np.save(tmp / fname, obj)
            else:
                write_json(tmp / fname, obj)
        return facts or {}

    return run_step(root, name, inputs={}, params={"files": sorted(files), "tag": tag}, build=build)


@pytest.fixture
def upstream(tmp_path: Path) -> tuple[StepResult, StepResult, StepResult, Path]:
    root = tmp_path / "artifacts"
    processed = fake_step(root, "preprocess", {"train.parquet": frame(TRAIN), "val.parquet": frame(VAL),
                                               "test.parquet": frame(TEST)})
    graph = fake_step(root, "build_graph", {"id_map.npz": {"movie_ids": IDS,
                                                           "user_ids": np.arange(1, 4, dtype=np.int64)}})
    trained = fake_step(root, "train", {"embeddings.npy": EMB, "rule.json": STEP_RULE},
                        facts={"model_version": "v0123456789ab"})
    return processed, graph, trained, root


def test_leave_one_out_reads_the_preprocess_folder(upstream) -> None:
    processed, *_ = upstream
    val = leave_one_out(processed.path, IDS, "val")
    assert val.user_ids.tolist() == [1, 2] and val.targets.tolist() == [2, 0]
    assert val.items.tolist() == [0, 1, 1, 4]  # train only
    test = leave_one_out(processed.path, IDS, "test")
    assert test.targets.tolist() == [3, 5] and test.items.tolist() == [0, 1, 2, 1, 4, 0]


def test_step_end_to_end_and_skipped_on_rerun(upstream) -> None:
    processed, graph, trained, root = upstream
    result = evaluate(processed, graph, trained, root)
    assert not result.skipped
    man = result.manifest
    assert (man["model_version"], man["served"], man["baselines"]) == ("v0123456789ab", SERVED, list(BASELINES))
    assert list(man["metrics"]) == ["val", "test"]
    for split in ("val", "test"):
        assert list(man["metrics"][split]) == list(METHODS)
        for m in man["metrics"][split].values():
            assert set(m) == {*METRIC_KEYS, "users"} and m["users"] == 2
    assert man["metrics"]["test"]["pinsage_latest"]["mrr"] == 1.0
    # Second-newest on test: user 1 queries with 2 (index 1): 5 first, the target tied with 6 -> rank 3;
    # user 2 with 5 (index 4): the target 6 and movie 4 score exactly alike (pessimistic: rank 2).
    assert man["metrics"]["test"][SERVED]["mrr"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    # Validation: user 1 (train 1, 2 -> 3): the query 2 (index 1) gives 3 (index 2) a score of 0, tied
    # with 4 and 6 and below 5 (index 4): rank 4 of 4 unseen; user 2 (2, 5 -> 1) likewise ranks 1 4th.
    assert man["metrics"]["val"]["pinsage_latest"]["mrr"] == pytest.approx(1 / 4)
    # Second-newest on val: user 1 queries with 1 (close only to 6), user 2 with 2 (orthogonal to every
    # movie it has not seen): both targets score 0 among 4 unseen movies and rank 4th.
    assert man["metrics"]["val"][SERVED]["mrr"] == pytest.approx(1 / 4)
    assert set(man["protocols"]) == {"leave_one_out", "time_split"}
    assert set(man["protocols"]["time_split"]["metrics"]) == {"val", "test"}
    saved = json.loads(result.out("metrics.json").read_text())
    assert saved["metrics"] == man["metrics"] and saved["protocols"] == man["protocols"]

    again = evaluate(processed, graph, trained, root)
    assert again.skipped and again.path == result.path
    assert not evaluate(processed, graph, trained, root, force=True).skipped


def test_embeddings_must_cover_the_catalog(upstream) -> None:
    processed, graph, _, root = upstream
    trained = fake_step(root, "train", {"embeddings.npy": EMB[:5], "rule.json": STEP_RULE},
                        facts={"model_version": "v0123456789ab"}, tag="short")
    with pytest.raises(InputError, match="one_row_per_movie"):
        evaluate(processed, graph, trained, root)


def test_score_vectors_same_model_equals_score_rule(upstream) -> None:
    processed, graph, *_ = upstream
    for split in ("val", "test"):
        own = score_rule(leave_one_out(processed.path, IDS, split), EMB, LATEST_RULE)
        # Rows in another order and by movie id: the same model gives the same figures.
        perm = np.array([3, 0, 5, 1, 4, 2])
        assert score_vectors(processed, graph, split, IDS[perm], EMB[perm], LATEST_RULE) == own


def test_score_vectors_missing_and_extra_movies(upstream) -> None:
    processed, graph, *_ = upstream
    # The other model lacks movie 4 (user 1's test target) and holds a movie 99 outside this catalog
    # whose vector would beat every other movie for both users.
    ids = np.array([1, 2, 3, 5, 6, 99])
    vecs = np.concatenate([EMB[[0, 1, 2, 4, 5]], np.ones((1, 4), np.float32)])
    got = score_vectors(processed, graph, "test", ids, vecs, LATEST_RULE)
    # User 1's target is missing: a miss. User 2 (latest 1 -> index 5) still ranks first: 99 is ignored.
    assert got["users"] == 2 and got["hr@10"] == 0.5 and got["mrr"] == 0.5
    # Missing movies are never recommended: without 6, user 2's target 6 is a miss. User 1's target 4 is
    # given a vector orthogonal to the query (movie 3): score 0, tied with movie 5 -> rank 2; a zero
    # vector for the missing movie 6 would tie too and push it to rank 3.
    vecs2 = EMB[:5].copy()
    vecs2[3] = [0, 0, 0, 1]
    got2 = score_vectors(processed, graph, "test", np.array([1, 2, 3, 4, 5]), vecs2, LATEST_RULE)
    assert got2["hr@10"] == 0.5 and got2["mrr"] == pytest.approx(0.25)
    # A user none of whose history movies the model has is a miss; the user count stays the candidate's.
    only = score_vectors(processed, graph, "test", np.array([4, 6]), EMB[[3, 5]], LATEST_RULE)
    assert only == {**{k: 0.0 for k in METRIC_KEYS}, "users": 2}
    with pytest.raises(InputError, match="one_vector_per_movie_id"):
        score_vectors(processed, graph, "test", ids, vecs[:3], LATEST_RULE)


# ---- the global time split on a crafted release ----------------------------------------------------
def test_time_split_targets_histories_and_fit() -> None:
    # 13 ratings; by count, the 50% and 80% quantiles of their timestamps are t = 7 and t = 10.
    ratings = frame([
        (1, 1, 1), (1, 2, 2), (1, 3, 9), (1, 4, 10), (1, 5, 10),  # 1: history {1, 2}; val 3; test 4 (tie: id)
        (2, 3, 3), (2, 1, 4),                                     # 2: nothing after the cut-offs
        (3, 2, 5), (3, 2, 10),                                    # 3: re-watches 2 at t = 10: skipped
        (4, 6, 11),                                               # 4: new after the cut-off (cold start)
        (5, 1, 6), (5, 6, 7), (5, 5, 8),
    ])
    assert time_cutoffs(ratings["timestamp"].to_numpy(), (0.5, 0.8)) == (7, 10)
    ids = np.arange(1, 7, dtype=np.int64)
    val = time_split(ratings, ids, 9, 10)
    assert val.heldout.user_ids.tolist() == [1] and val.heldout.targets.tolist() == [2]
    assert val.heldout.items.tolist() == [0, 1] and val.new_users == 0
    test = time_split(ratings, ids, 10)
    assert test.heldout.user_ids.tolist() == [1] and test.heldout.targets.tolist() == [3]  # 4 before 5
    assert test.heldout.items.tolist() == [0, 1, 2]  # everything before t = 10, oldest first
    assert test.heldout.skipped_rewatches == 1 and test.new_users == 1
    assert sorted(test.fit["timestamp"]) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    # Popularity fitted before the cut-off only: movie 6 (rated at t = 11 by user 4) counts once (t = 7).
    pop = Baselines.fit(test.fit, ids, test.heldout.latest).popularity
    assert pop.tolist() == [3, 2, 2, 0, 1, 1]


def test_evaluate_frames_reports_both_protocols_and_the_leak() -> None:
    frames = {"train": frame(TRAIN), "val": frame(VAL), "test": frame(TEST)}
    out = evaluate_frames(frames, IDS, EMB, STEP_RULE)
    loo = out["protocols"]["leave_one_out"]
    assert loo["same_second"]["val_test"] == 0.0
    # Movie 4 has no train ratings; movie 6 (user 2's test at t = 40) was rated in train at t = 20: not later.
    assert loo["train_ratings_after_heldout"]["test"] == {"mean": 0.0, "pooled": 0.0, "events": 1}
    # Val: movie 3 has no train rating; movie 1 (user 2's val at t = 30) has one at t = 10.
    assert loo["train_ratings_after_heldout"]["val"]["events"] == 1
    ts = out["protocols"]["time_split"]
    assert set(ts["metrics"]["test"]) == set(METHODS) and set(ts["model_leak"]) == {"val", "test"}
    # Both cut-offs fall at t = 40 (the 80% and 90% quantiles of ten timestamps): the val window is empty.
    assert ts["metrics"]["val"] == {} and ts["counts"]["val"]["users"] == 0
    assert ts["counts"]["test"]["users"] == 2
    assert out["counts"]["test_users"] == 2


def test_later_share_measures_the_cross_user_leak() -> None:
    from recsys_tasks.model.evaluate import later_share

    # Movie 7 has train ratings at t = 1, 5, 9, 9; movie 8 at t = 2; movie 9 none.
    fit = frame([(1, 7, 1), (2, 7, 5), (3, 7, 9), (4, 7, 9), (5, 8, 2)])
    # An event on 7 at t = 5: two of its four ratings are later (ties at t = 5 are not). On 8 at t = 1: 1 of 1.
    events = frame([(6, 7, 5), (7, 8, 1), (8, 9, 3)])
    got = later_share(fit, events)
    assert got == {"mean": pytest.approx((2 / 4 + 1) / 2), "pooled": pytest.approx(3 / 5), "events": 2}


def test_score_vectors_on_the_time_split(upstream) -> None:
    processed, graph, *_ = upstream
    # All ten ratings: cut-offs at t = 40 for both (see above); test = each user's first rating at t >= 40,
    # history everything before: the same rows as leave-one-out's test here.
    got = score_vectors(processed, graph, "time_test", IDS, EMB, LATEST_RULE)
    assert got == score_rule(leave_one_out(processed.path, IDS, "test"), EMB, LATEST_RULE)
    with pytest.raises(ValueError, match="split must be one of"):
        score_vectors(processed, graph, "train", IDS, EMB, LATEST_RULE)
