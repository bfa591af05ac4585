"""The pipeline's one step table, and `run`: what the CLI (`recsys run`), the DAG and the tests derive from.

Each step is a function `(settings, *results of the steps it reads) -> StepResult`. The table says, per
step, which earlier steps it reads, its stage (the DAG's task group) and its kind: a `gate` checks and
stops the run (never retried), an `io` step talks to a store or the network (retried with backoff), a
`compute` step transforms files. Heavy libraries are imported inside each step, so importing this
module (from a DAG file, say) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from recsys_tasks.artifacts import StepResult
from recsys_tasks.config import ConfigError, Settings

Stage = Literal["data", "model", "release"]
Kind = Literal["gate", "io", "compute"]


def ingest(s: Settings) -> StepResult:
    """The release the settings name; a dated source (a backfill's folder of dated snapshots) gives the
    newest snapshot at or before the run date (the newest of all without one), as the DAG resolves it."""
    from recsys_tasks.data.ingest import UnzipLimits, ingest_snapshot
    from recsys_tasks.data.snapshots import resolve_snapshot

    snapshot = resolve_snapshot(s.snapshot, s.resolved_run_date if s.run_date else None)
    return ingest_snapshot(snapshot, s.artifacts, downloads=s.home / "downloads", skip_checksum=s.skip_checksum,
                           force=s.force, unzip_limits=UnzipLimits(s.unzip_max_bytes, s.unzip_max_ratio))


def validate_raw(s: Settings, ingested: StepResult) -> StepResult:
    from recsys_tasks.validation.gates import validate_raw as gate

    return gate(ingested, s.artifacts, force=s.force)


def preprocess(s: Settings, ingested: StepResult) -> StepResult:
    from recsys_tasks.data.preprocess import preprocess as step

    return step(ingested, s.artifacts, force=s.force)


def validate_processed(s: Settings, processed: StepResult) -> StepResult:
    from recsys_tasks.validation.gates import validate_processed as gate

    return gate(processed, s.artifacts, force=s.force)


def build_graph(s: Settings, processed: StepResult) -> StepResult:
    from recsys_tasks.graph.build import build_graph as step

    return step(processed, s.artifacts, force=s.force)


def validate_graph(s: Settings, graph: StepResult, processed: StepResult) -> StepResult:
    from recsys_tasks.validation.gates import validate_graph as gate

    return gate(graph, processed, s.artifacts, force=s.force)


def train(s: Settings, processed: StepResult, graph: StepResult) -> StepResult:
    from recsys_tasks.model.train import train as step

    return step(processed, graph, s)


def evaluate(s: Settings, processed: StepResult, graph: StepResult, trained: StepResult) -> StepResult:
    from recsys_tasks.model.evaluate import evaluate as step

    return step(processed, graph, trained, s.artifacts, force=s.force)


def quality_gate(s: Settings, processed: StepResult, graph: StepResult, evaluated: StepResult) -> StepResult:
    from recsys_tasks.release.gate import quality_gate as gate

    return gate(s, processed, graph, evaluated)


def export_embeddings(s: Settings, graph: StepResult, trained: StepResult) -> StepResult:
    from recsys_tasks.model.export import export_embeddings as step

    return step(graph, trained, s.artifacts, force=s.force)


def validate_embeddings(s: Settings, exported: StepResult, processed: StepResult) -> StepResult:
    from recsys_tasks.validation.gates import validate_embeddings as gate

    return gate(exported, processed, s.artifacts, force=s.force)


def load_vectors(s: Settings, exported: StepResult, processed: StepResult) -> StepResult:
    from recsys_tasks.release.loads import load_vectors as step

    return step(s, exported, processed)


def load_catalog(s: Settings, processed: StepResult, evaluated: StepResult) -> StepResult:
    from recsys_tasks.release.loads import load_catalog as step

    return step(s, processed, evaluated)


def smoke_test(s: Settings, loaded: StepResult, exported: StepResult, processed: StepResult,
               graph: StepResult) -> StepResult:
    from recsys_tasks.release.smoke import smoke_test as step

    return step(s, loaded, exported, processed, graph)


def promote(s: Settings, gated: StepResult, loaded: StepResult) -> StepResult:
    from recsys_tasks.release.promotion import promote as step

    return step(s, gated, loaded)


@dataclass(frozen=True)
class Step:
    name: str
    stage: Stage
    kind: Kind
    reads: tuple[str, ...]  # the steps whose results `run` takes, in its argument order
    run: Callable[..., StepResult]


STEPS: tuple[Step, ...] = (
    Step("ingest", "data", "io", (), ingest),
    Step("validate_raw", "data", "gate", ("ingest",), validate_raw),
    Step("preprocess", "data", "compute", ("ingest",), preprocess),
    Step("validate_processed", "data", "gate", ("preprocess",), validate_processed),
    Step("build_graph", "data", "compute", ("preprocess",), build_graph),
    Step("validate_graph", "data", "gate", ("build_graph", "preprocess"), validate_graph),
    Step("train", "model", "compute", ("preprocess", "build_graph"), train),
    Step("evaluate", "model", "compute", ("preprocess", "build_graph", "train"), evaluate),
    Step("quality_gate", "model", "gate", ("preprocess", "build_graph", "evaluate"), quality_gate),
    Step("export_embeddings", "model", "compute", ("build_graph", "train"), export_embeddings),
    Step("validate_embeddings", "model", "gate", ("export_embeddings", "preprocess"), validate_embeddings),
    Step("load_vectors", "release", "io", ("export_embeddings", "preprocess"), load_vectors),
    Step("load_catalog", "release", "io", ("preprocess", "evaluate"), load_catalog),
    Step("smoke_test", "release", "gate", ("load_vectors", "export_embeddings", "preprocess", "build_graph"),
         smoke_test),
    Step("promote", "release", "io", ("quality_gate", "load_vectors"), promote),
)
NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
BY_NAME: dict[str, Step] = {s.name: s for s in STEPS}
GATES: tuple[str, ...] = tuple(s.name for s in STEPS if s.kind == "gate")


def run_one(s: Settings, name: str, inputs: Sequence[StepResult]) -> StepResult:
    """One step on the results of the steps it reads (in `reads` order), under the settings' locks: the
    catalog database's advisory locks, which hold across every host sharing it (file locks for SQLite)."""
    from recsys_tasks import locks
    from recsys_tasks.stores.catalog import Catalog

    step = BY_NAME[name]
    if len(inputs) != len(step.reads):
        raise TypeError(f"{name} reads {', '.join(step.reads) or 'nothing'}; got {len(inputs)} results")
    with locks.using(Catalog.from_settings(s).locks()):
        return step.run(s, *inputs)


def run(s: Settings, until: str = "promote",
        on_step: Callable[[StepResult], Any] | None = None) -> dict[str, StepResult]:
    """Every step in order up to and including `until`; returns the results by step name."""
    if until not in BY_NAME:
        raise ConfigError(f"until: {until!r} is not a step; steps are {', '.join(NAMES)}")
    results: dict[str, StepResult] = {}
    for step in STEPS:
        results[step.name] = run_one(s, step.name, [results[r] for r in step.reads])
        if on_step:
            on_step(results[step.name])
        if step.name == until:
            break
    return results
