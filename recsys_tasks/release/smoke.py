"""smoke_test: the candidate answers like a served model before it is served.

It asks the candidate's own collection (never the alias) what the API would: similar movies and a
history's recommendations, with its own catalog's titles. It always runs (it checks the stores as they
are now). A store that answers badly once is asked again (a server restarting, an index finishing
loading) before the candidate is rejected for good.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tenacity import Retrying, stop_after_attempt, wait_exponential

from recsys_tasks.artifacts import StepResult, run_step, step_key, write_json
from recsys_tasks.config import Settings
from recsys_tasks.errors import GateFailure
from recsys_tasks.logs import get_logger
from recsys_tasks.release.loads import read_embeddings
from recsys_tasks.release.registry import Registry
from recsys_tasks.serving.recommend import history_in, served, similar_in
from recsys_tasks.stores.catalog import Catalog
from recsys_tasks.stores.milvus import VectorStore

log = get_logger(__name__)
SAMPLE = 5
ATTEMPTS = 3
RETRY_WAIT_S = 2.0  # first wait between attempts; doubles (tests shrink it)


class Problems(Exception):
    """What one attempt found wrong (retried; the last attempt's list is the verdict)."""


def checks(settings: Settings, name: str, ids: np.ndarray, expected: int) -> list[str]:
    store, catalog = VectorStore.from_settings(settings), Catalog.from_settings(settings)
    if not store.is_complete(name, expected):
        return [f"{name} is not complete (verified, {expected} rows, index built)"]
    model = served(store, catalog, name)
    problems = []
    known = catalog.movies_by_id(ids.tolist(), model.catalog_id)
    if len(known) != ids.size:
        missing = sorted(set(ids.tolist()) - set(known))
        problems.append(f"{len(missing)} vectors have no catalog record, e.g. {missing[:5]}")
    k = min(10, ids.size - 1)
    sample = ids[np.unique(np.linspace(0, ids.size - 1, min(SAMPLE, ids.size)).astype(int))]
    for movie_id in sample.tolist():
        items = similar_in(model, movie_id, k)["items"]
        if len(items) != k or any(i["title"] is None for i in items) or movie_id in {i["movie_id"] for i in items}:
            problems.append(f"similar({movie_id}): {len(items)} items, expected {k} catalog movies without itself")
    history = sample.tolist()[:3]
    items = history_in(model, history, k)["items"]
    if len(items) < min(k, ids.size - len(history)) or set(history) & {i["movie_id"] for i in items}:
        problems.append(f"recommendations for history {history}: {len(items)} items or history not excluded")
    return problems


def smoke_test(settings: Settings, loaded: StepResult, exported: StepResult) -> StepResult:
    version, name = str(loaded.manifest["model_version"]), str(loaded.manifest["collection"])
    ids, _ = read_embeddings(exported)
    inputs = {"load_vectors": loaded.key, "export_embeddings": exported.key}
    key = step_key("smoke_test", inputs, {}, module=__name__)

    def attempt() -> None:
        problems = checks(settings, name, ids, int(loaded.manifest["counts"]["vectors"]))
        if problems:
            log.warning("smoke test of %s: %s", name, problems[0])
            raise Problems(problems)

    def build(tmp: Path) -> dict[str, Any]:
        problems: list[str] = []
        try:
            for tried in Retrying(stop=stop_after_attempt(ATTEMPTS), reraise=True,
                                  wait=wait_exponential(multiplier=RETRY_WAIT_S, max=30)):
                with tried:
                    attempt()
        except Problems as exc:
            problems = list(exc.args[0])
        write_json(tmp / "smoke.json", {"collection": name, "passed": not problems, "problems": problems})
        if problems:
            registry = Registry(Catalog.from_settings(settings))
            if (registry.get(version) or {}).get("status") == "candidate":  # the live model is never rejected
                registry.reject(version, f"smoke_test: {problems[0]}", "smoke_test")
            raise GateFailure(f"smoke test of {name}: {problems[0]}", rule="smoke_test",
                              report=settings.artifacts / "smoke_test" / f"{key}.failed" / "smoke.json")
        return {"model_version": version, "collection": name}

    return run_step(settings.artifacts, "smoke_test", inputs=inputs, params={}, build=build, force=True, key=key)
