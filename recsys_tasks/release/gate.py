"""quality_gate: may this model be served? Judged once per evaluation; the verdict stands on re-runs.

Selection uses validation only: the served rule against every baseline of the same run, and against the
live model scored on this candidate's own validation split (champion / challenger). Test figures are
recorded in the decision, never used by it. Promotion re-judges against the live model if that changed
between this gate and the alias switch (a concurrent run promoted another model).

The live model's figures are part of the decision, not of the step's key: otherwise re-running a date
already judged (a backfill re-run, say) would judge the model again against its successors. A failed
verdict stands too (run_step keeps it in `<key>.failed/`), until its inputs change or it is forced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recsys_tasks.artifacts import MANIFEST, StepResult, run_step, step_key, write_json
from recsys_tasks.config import Settings
from recsys_tasks.errors import GateFailure
from recsys_tasks.logs import get_logger
from recsys_tasks.release.facts import registration
from recsys_tasks.release.registry import Registry
from recsys_tasks.stores.catalog import Catalog
from recsys_tasks.stores.milvus import VectorStore, collection_name

log = get_logger(__name__)
CHAMPION_BATCH = 5000  # movie ids per vector read from the live collection


def decide(version: str, evaluation: dict[str, Any], champion: dict[str, Any] | None,
           margin: float) -> dict[str, Any]:
    """The promotion rule, on validation HR@10 only (test is reported, never used to choose).

    The served rule must beat every baseline of the same run on the same split, and may fall at most
    `margin` below the live model scored on this candidate's own validation split (`champion`).
    """
    served, baselines = evaluation["served"], list(evaluation["baselines"])
    val = evaluation["metrics"]["val"]
    hr = {m: (val.get(m) or {}).get("hr@10") for m in (served, *baselines)}
    decision: dict[str, Any] = {
        "model_version": version, "split": "val", "served": served, "hr@10": hr, "quality_margin": margin,
        "champion": champion, "test_hr@10": {m: v.get("hr@10") for m, v in evaluation["metrics"]["test"].items()},
        "passed": True, "rule": None, "message": "promotable"}

    def fail(rule: str, message: str) -> dict[str, Any]:
        return {**decision, "passed": False, "rule": rule, "message": message}

    missing = sorted(m for m, v in hr.items() if v is None)
    if missing:
        return fail("metrics_present", f"evaluation has no validation hr@10 for {', '.join(missing)}")
    for base in baselines:
        if not hr[served] > hr[base]:
            return fail("beats_baselines", f"{served} validation hr@10 {hr[served]:.4f} does not beat {base} "
                                           f"{hr[base]:.4f}")
    if champion is not None and hr[served] < champion["hr@10"] - margin:
        return fail("no_regression", f"{served} validation hr@10 {hr[served]:.4f} is more than {margin} below the "
                                     f"live model {champion['version']} on the same split ({champion['hr@10']:.4f})")
    return decision


def champion(store: VectorStore, registry: Registry, processed: StepResult, graph: StepResult,
             candidate: str) -> dict[str, Any] | None:
    """The live model scored on the candidate's validation split: its own vectors (read back from its
    collection) and its own rule; movies it lacks count as misses. None when nothing else is live."""
    from recsys_tasks.model.evaluate import score_vectors

    live = registry.active()
    if live is None or live["version"] == candidate:
        return None
    name = collection_name(live["version"])
    with np.load(graph.out("id_map.npz")) as ids:
        catalog = ids["movie_ids"].astype(np.int64)
    found: dict[int, np.ndarray] = {}
    for start in range(0, len(catalog), CHAMPION_BATCH):
        found.update(store.vectors(name, catalog[start:start + CHAMPION_BATCH]))
    movie_ids = np.fromiter(found, np.int64, len(found))
    vectors = np.stack([found[m] for m in movie_ids]) if found else np.zeros((0, 1), np.float32)
    metrics = score_vectors(processed, graph, "val", movie_ids, vectors, dict(live["rule"] or {}))
    return {"version": live["version"], "hr@10": metrics["hr@10"], "ndcg@10": metrics["ndcg@10"],
            "movies_known": len(found), "movies": len(catalog)}


def judge(settings: Settings, processed: StepResult, graph: StepResult, evaluated: StepResult,
          registry: Registry) -> dict[str, Any]:
    """The decision for the model `evaluated` scored, against whatever is live now."""
    version = str(evaluated.manifest["model_version"])
    row = registry.get(version)
    if row is not None and row["promoted_at"] is not None:  # judged and served before: never judged again
        return {"model_version": version, "passed": True, "rule": None, "champion": None,
                "message": f"served before (first promoted {row['promoted_at']}); not judged again"}
    best = champion(VectorStore.from_settings(settings), registry, processed, graph, version)
    return decide(version, evaluated.manifest, best, settings.quality_margin)


def rejection(decision: dict[str, Any]) -> str:
    return f"quality_gate {decision['rule']}: {decision['message']}"


def quality_gate(settings: Settings, processed: StepResult, graph: StepResult, evaluated: StepResult) -> StepResult:
    version = str(evaluated.manifest["model_version"])
    registry = Registry(Catalog.from_settings(settings))
    inputs = {"preprocess": processed.key, "build_graph": graph.key, "evaluate": evaluated.key}
    params = {"quality_margin": settings.quality_margin}
    key = step_key("quality_gate", inputs, params, module=__name__)

    def build(tmp: Path) -> dict[str, Any]:
        registry.register(version, **registration(settings, processed, evaluated))
        decision = judge(settings, processed, graph, evaluated, registry)
        write_json(tmp / "decision.json", decision)
        if not decision["passed"]:
            live = registry.active()
            registry.reject(version, rejection(decision), "quality_gate")
            stays = f"{live['version']} stays live" if live else "nothing is live yet"
            raise GateFailure(f"quality gate: {decision['message']}; {stays}", rule=decision["rule"],
                              file=evaluated.path / MANIFEST,
                              report=tmp.parent / f"{key}.failed" / "decision.json")
        return {"model_version": version, "decision": decision}

    return run_step(settings.artifacts, "quality_gate", inputs=inputs, params=params, build=build,
                    force=settings.force, key=key)
