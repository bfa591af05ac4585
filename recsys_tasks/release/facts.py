"""What the registry records about a candidate, read from its step folders (one place for every step).

A version's facts never change once registered: the snapshot and the movie catalog it was trained on,
how new its data is, its evaluation and the served rule's parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from recsys_tasks.artifacts import MANIFEST, StepResult, fingerprint, read_json
from recsys_tasks.config import Settings
from recsys_tasks.errors import InputError
from recsys_tasks.stores.catalog import MOVIE_FIELDS


def movie_rows(processed: StepResult) -> list[dict[str, Any]]:
    """The catalog's movie records, sorted by id (preprocess writes movies.parquet sorted)."""
    table = pq.read_table(processed.out("movies.parquet"), columns=list(MOVIE_FIELDS))
    return [{"movie_id": int(r["movie_id"]), "title": r["title"], "year": r["year"], "genres": r["genres"] or ""}
            for r in table.to_pylist()]


def catalog_id(rows: list[dict[str, Any]]) -> str:
    """A content hash of the movie records: equal catalogs (most nights) share one copy in the database."""
    return fingerprint([[r[f] for f in MOVIE_FIELDS] for r in rows])[:32]


def rule_params(settings: Settings, evaluated: StepResult) -> dict[str, Any]:
    """The served rule's parameters: rule.json of the train folder the evaluation scored."""
    train_key = evaluated.manifest.get("inputs", {}).get("train")
    path = settings.artifacts / "train" / str(train_key) / "rule.json"
    if not path.is_file():
        raise InputError("the served rule's parameters are missing (a model is served only with the rule it "
                         "was evaluated with)", file=path, rule="rule.json present")
    return dict(read_json(path))


def registration(settings: Settings, processed: StepResult, evaluated: StepResult) -> dict[str, Any]:
    """The keyword arguments of `Registry.register` for the version `evaluated` scored."""
    newest = processed.manifest.get("newest_rating_ts")
    if newest is None:
        raise InputError("the preprocess manifest has no newest_rating_ts (re-run preprocess)",
                         file=processed.path / MANIFEST, rule="newest_rating_ts present")
    return {"snapshot_id": processed.manifest.get("snapshot_id"), "catalog_id": catalog_id(movie_rows(processed)),
            "data_ts": int(newest), "run_date": settings.resolved_run_date,
            "metrics": dict(evaluated.manifest["metrics"]), "rule": rule_params(settings, evaluated)}


def step_folder(settings: Settings, step: str, key: str) -> Path:
    return settings.artifacts / step / key
