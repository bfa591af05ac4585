"""quality_gate: may this model be served? Judged once per evaluation; the verdict stands on re-runs.

The live model's figures are part of the decision, not of the step's key: otherwise re-running a date
already judged (a backfill re-run, say) would judge the model again against its successors. A failed
verdict stands too (run_step keeps it in `<key>.failed/`), until its inputs change or it is forced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys_tasks.artifacts import MANIFEST, StepResult, run_step, step_key, write_json
from recsys_tasks.config import Settings
from recsys_tasks.errors import GateFailure
from recsys_tasks.logs import get_logger
from recsys_tasks.release.facts import registration
from recsys_tasks.release.registry import Registry
from recsys_tasks.stores.catalog import Catalog

log = get_logger(__name__)
SERVED = "pinsage_history"
BASELINES = ("popularity", "itemknn")


def decide(version: str, metrics: dict[str, Any], active: dict[str, Any] | None, margin: float) -> dict[str, Any]:
    """The promotion rule on test hr@10, as a JSON-able decision."""
    hr = {m: (metrics.get(m) or {}).get("hr@10") for m in (SERVED, *BASELINES)}
    live_hr = ((active or {}).get("metrics") or {}).get(SERVED, {}).get("hr@10")
    decision: dict[str, Any] = {"model_version": version, "hr@10": hr, "quality_margin": margin,
                                "active_version": (active or {}).get("version"), "active_hr@10": live_hr,
                                "passed": True, "rule": None, "message": "promotable"}

    def fail(rule: str, message: str) -> dict[str, Any]:
        return {**decision, "passed": False, "rule": rule, "message": message}

    missing = sorted(m for m, v in hr.items() if v is None)
    if missing:
        return fail("metrics_present", f"evaluation has no test hr@10 for {', '.join(missing)}")
    for base in BASELINES:
        if not hr[SERVED] > hr[base]:
            return fail("beats_baselines", f"{SERVED} hr@10 {hr[SERVED]:.4f} does not beat {base} {hr[base]:.4f}")
    if active and active["version"] != version and live_hr is not None and hr[SERVED] < live_hr - margin:
        return fail("no_regression", f"{SERVED} hr@10 {hr[SERVED]:.4f} is more than {margin} below the live "
                                     f"model {active['version']} ({live_hr:.4f})")
    return decision


def quality_gate(settings: Settings, processed: StepResult, graph: StepResult, evaluated: StepResult) -> StepResult:
    version = str(evaluated.manifest["model_version"])
    registry = Registry(Catalog.from_settings(settings))
    inputs = {"preprocess": processed.key, "build_graph": graph.key, "evaluate": evaluated.key}
    params = {"quality_margin": settings.quality_margin}
    key = step_key("quality_gate", inputs, params, module=__name__)

    def build(tmp: Path) -> dict[str, Any]:
        facts = registration(settings, processed, evaluated)
        row = registry.register(version, **facts)
        if row["promoted_at"] is not None:  # judged and served before: never judged again by a run
            decision = {"model_version": version, "passed": True, "rule": None,
                        "message": f"served before (first promoted {row['promoted_at']}); not judged again"}
        else:
            decision = decide(version, facts["metrics"], registry.active(), settings.quality_margin)
        write_json(tmp / "decision.json", decision)
        if not decision["passed"]:
            live = registry.active()
            registry.reject(version, f"quality_gate {decision['rule']}: {decision['message']}", "quality_gate")
            stays = f"{live['version']} stays live" if live else "nothing is live yet"
            raise GateFailure(f"quality gate: {decision['message']}; {stays}", rule=decision["rule"],
                              file=evaluated.path / MANIFEST,
                              report=tmp.parent / f"{key}.failed" / "decision.json")
        return {"model_version": version, "decision": decision}

    return run_step(settings.artifacts, "quality_gate", inputs=inputs, params=params, build=build,
                    force=settings.force, key=key)
