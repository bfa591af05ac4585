"""smoke_test: the candidate answers like a served model before it is served.

It asks the candidate's own collection (never the alias) what the API would: similar movies and a
history's recommendations, with its own catalog's titles. Then it evaluates the served path itself:
for a sample of test users, the served rule through Milvus's HNSW search against the same rule by
exact search over the exported vectors: HR@10 of both, and the search's recall@10. A gap beyond
MAX_HR_GAP or a recall under MIN_RECALL fails the test: what is served is not what was evaluated.

It always runs (it checks the stores as they are now). A store that answers badly once is asked again
(a server restarting, an index finishing loading) before the candidate is rejected for good.
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
from recsys_tasks.model.rules import history_query
from recsys_tasks.release.loads import read_embeddings
from recsys_tasks.release.registry import Registry
from recsys_tasks.serving.recommend import Served, history_in, search_history, served, similar_in
from recsys_tasks.stores.catalog import Catalog
from recsys_tasks.stores.milvus import VectorStore

log = get_logger(__name__)
SAMPLE = 5
SERVED_SAMPLE = 200  # test users whose served recommendations are compared with exact search
MIN_RECALL = 0.95  # of HNSW top-10 against exact top-10
MAX_HR_GAP = 0.02  # |served HR@10 - exact HR@10| on the sample
ATTEMPTS = 3
RETRY_WAIT_S = 2.0  # first wait between attempts; doubles (tests shrink it)


class Problems(Exception):
    """What one attempt found wrong (retried; the last attempt's list is the verdict)."""


def served_path(model: Served, processed: StepResult, graph: StepResult, ids: np.ndarray,
                vectors: np.ndarray) -> dict[str, Any]:
    """HR@10 through Milvus and by exact search, and recall@10, on a sample of test users."""
    from recsys_tasks.model.evaluate import leave_one_out

    with np.load(graph.out("id_map.npz")) as id_map:
        catalog = id_map["movie_ids"].astype(np.int64)
    h = leave_one_out(processed.path, catalog, "test")
    rows = np.unique(np.linspace(0, h.n_users - 1, min(SERVED_SAMPLE, h.n_users)).astype(int))
    position = {int(m): i for i, m in enumerate(ids)}
    served_hits = exact_hits = overlap = 0
    for r in rows.tolist():
        history = catalog[h.items[h.starts[r]:h.starts[r + 1]]]
        target = int(catalog[h.targets[r]])
        served = [hit.movie_id for hit in search_history(model, history.tolist(), 10)]
        scores = vectors @ history_query(vectors[[position[int(m)] for m in history]], model.rule)
        scores[[position[int(m)] for m in history]] = -np.inf
        exact = [int(ids[i]) for i in np.argsort(-scores, kind="stable")[:10]]
        served_hits += target in served
        exact_hits += target in exact
        overlap += len(set(served) & set(exact))
    n = len(rows)
    return {"users": n, "served_hr@10": served_hits / n, "exact_hr@10": exact_hits / n,
            "recall@10": overlap / (10 * n)}


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


def path_problems(path: dict[str, Any]) -> list[str]:
    problems = []
    if path["recall@10"] < MIN_RECALL:
        problems.append(f"vector search recall@10 {path['recall@10']:.3f} against exact search is under {MIN_RECALL}")
    if abs(path["served_hr@10"] - path["exact_hr@10"]) > MAX_HR_GAP:
        problems.append(f"served HR@10 {path['served_hr@10']:.4f} differs from exact search's "
                        f"{path['exact_hr@10']:.4f} by more than {MAX_HR_GAP}")
    return problems


def smoke_test(settings: Settings, loaded: StepResult, exported: StepResult, processed: StepResult,
               graph: StepResult) -> StepResult:
    version, name = str(loaded.manifest["model_version"]), str(loaded.manifest["collection"])
    ids, vectors = read_embeddings(exported)
    inputs = {"load_vectors": loaded.key, "export_embeddings": exported.key, "preprocess": processed.key,
              "build_graph": graph.key}
    path: dict[str, Any] = {}
    key = step_key("smoke_test", inputs, {}, module=__name__)

    def attempt() -> None:
        problems = checks(settings, name, ids, int(loaded.manifest["counts"]["vectors"]))
        if not problems:
            model = served(VectorStore.from_settings(settings), Catalog.from_settings(settings), name)
            path.update(served_path(model, processed, graph, ids, vectors))
            problems = path_problems(path)
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
        write_json(tmp / "smoke.json", {"collection": name, "passed": not problems, "problems": problems,
                                        "served_path": path})
        if problems:
            registry = Registry(Catalog.from_settings(settings))
            if (registry.get(version) or {}).get("status") == "candidate":  # the live model is never rejected
                registry.reject(version, f"smoke_test: {problems[0]}", "smoke_test")
            raise GateFailure(f"smoke test of {name}: {problems[0]}", rule="smoke_test",
                              report=settings.artifacts / "smoke_test" / f"{key}.failed" / "smoke.json")
        log.info("smoke test of %s: served path on %d test users: HR@10 %.4f (exact search %.4f), recall@10 %.3f",
                 name, path["users"], path["served_hr@10"], path["exact_hr@10"], path["recall@10"])
        return {"model_version": version, "collection": name, "served_path": path}

    return run_step(settings.artifacts, "smoke_test", inputs=inputs, params={}, build=build, force=True, key=key)
