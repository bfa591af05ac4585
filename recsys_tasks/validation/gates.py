"""The validation gates between pipeline stages: steps that write a report and stop the run on bad data.

Each gate is a step (`run_step`) keyed by its upstream step's key, so re-validating unchanged data is
skipped. It writes report.json and report.html into its folder; on any failed rule it raises GateFailure
naming the file, the rule, the failing count and sample rows. run_step keeps a failed gate's folder as
`<key>.failed`, and the exception's `report` points at the report inside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys_tasks.artifacts import MANIFEST, StepResult, run_step, step_key
from recsys_tasks.errors import GateFailure, InputError
from recsys_tasks.logs import get_logger
from recsys_tasks.validation.report import REPORT_JSON, failure_message, write_report
from recsys_tasks.validation.suites import (
    ALLOWED_RATINGS,
    EMBEDDING_PARAMS,
    GRAPH_PARAMS,
    PROCESSED_PARAMS,
    RAW_PARAMS,
    Outcome,
    embedding_rules,
    graph_rules,
    processed_rules,
    raw_rules,
)

log = get_logger(__name__)


def validate_raw(ingested: StepResult, root: Path, *, force: bool = False) -> StepResult:
    release = ingested.manifest.get("release")
    if release not in ALLOWED_RATINGS:
        raise InputError(f"release {release!r} is not one of {', '.join(sorted(ALLOWED_RATINGS))}",
                         file=ingested.path / MANIFEST, rule="known_release")
    return _gate("validate_raw", root, {"ingest": ingested.key}, {**RAW_PARAMS, "release": release}, force,
                 lambda: raw_rules(ingested.path, release, now=time.time()), [ingested.path])


def validate_processed(processed: StepResult, root: Path, *, force: bool = False) -> StepResult:
    return _gate("validate_processed", root, {"preprocess": processed.key}, PROCESSED_PARAMS, force,
                 lambda: processed_rules(processed.path, now=time.time()), [processed.path])


def validate_graph(graph: StepResult, processed: StepResult, root: Path, *,
                   force: bool = False) -> StepResult:
    use_graph_bin = bool(graph.manifest.get("dgl_graph", graph.out("graph.bin").exists()))
    inputs = {"build_graph": graph.key, "preprocess": processed.key}
    return _gate("validate_graph", root, inputs, GRAPH_PARAMS, force,
                 lambda: graph_rules(graph.path, processed.path, use_graph_bin=use_graph_bin),
                 [graph.path, processed.path])


def validate_embeddings(exported: StepResult, processed: StepResult, root: Path, *,
                        force: bool = False) -> StepResult:
    inputs = {"export_embeddings": exported.key, "preprocess": processed.key}
    return _gate("validate_embeddings", root, inputs, EMBEDDING_PARAMS, force,
                 lambda: embedding_rules(exported.path, exported.manifest, processed.path),
                 [exported.path, processed.path])


def _gate(name: str, root: Path, inputs: dict[str, str], params: dict[str, Any], force: bool,
          evaluate: Callable[[], Outcome], sources: list[Path]) -> StepResult:
    key = step_key(name, inputs, params, module=__name__)

    def build(tmp: Path) -> dict[str, Any]:
        started = time.perf_counter()
        outcome = evaluate()
        write_report(tmp, name, outcome.results, counts=outcome.counts, stats=outcome.stats, sources=sources)
        failed = [r for r in outcome.results if r.failed]
        log.info("%s: %d rules, %d failed, %.2fs", name, len(outcome.results), len(failed),
                 time.perf_counter() - started)
        if failed:
            report = tmp.parent / f"{key}.failed" / REPORT_JSON  # where run_step moves `tmp` on InputError
            raise GateFailure(failure_message(name, outcome.results, report), report=report,
                              rule=failed[0].rule, file=_locate(failed[0].file, sources))
        return {"gate": name, "passed": True, "rules": len(outcome.results), "counts": outcome.counts}

    return run_step(root, name, inputs=inputs, params=params, build=build, force=force, key=key)


def _locate(file: str, sources: list[Path]) -> Path:
    """The full path of a report's file label: the first source folder holding it."""
    return next((folder / file for folder in sources if (folder / file).exists()), sources[0] / file)
