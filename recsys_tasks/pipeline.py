"""The pipeline's steps, in order; the same functions the CLI (`recsys run`) and the DAG call.

Each step takes the settings and the results of the steps it reads, and returns a StepResult (its
folder and manifest). Heavy libraries are imported inside each step so that importing this module
(from a DAG file, say) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recsys_tasks.artifacts import StepResult
from recsys_tasks.config import ConfigError, Settings

STEPS = (
    "ingest", "validate_raw", "preprocess", "validate_processed", "build_graph", "validate_graph",
    "train", "evaluate", "quality_gate", "export_embeddings", "validate_embeddings", "load_vectors",
    "load_catalog", "smoke_test", "promote",
)


def ingest(s: Settings) -> StepResult:
    from recsys_tasks.data.ingest import ingest_snapshot

    return ingest_snapshot(s.snapshot, s.artifacts, downloads=s.home / "downloads",
                           skip_checksum=s.skip_checksum, force=s.force)


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


def quality_gate(s: Settings, evaluated: StepResult) -> StepResult:
    from recsys_tasks.stores.steps import quality_gate as gate

    return gate(s, evaluated)


def export_embeddings(s: Settings, graph: StepResult, trained: StepResult) -> StepResult:
    from recsys_tasks.model.export import export_embeddings as step

    return step(graph, trained, s.artifacts, force=s.force)


def validate_embeddings(s: Settings, exported: StepResult, processed: StepResult) -> StepResult:
    from recsys_tasks.validation.gates import validate_embeddings as gate

    return gate(exported, processed, s.artifacts, force=s.force)


def load_vectors(s: Settings, exported: StepResult, processed: StepResult) -> StepResult:
    from recsys_tasks.stores.steps import load_vectors as step

    return step(s, exported, processed)


def load_catalog(s: Settings, processed: StepResult, evaluated: StepResult) -> StepResult:
    from recsys_tasks.stores.steps import load_catalog as step

    return step(s, processed, evaluated)


def smoke_test(s: Settings, loaded: StepResult, exported: StepResult) -> StepResult:
    from recsys_tasks.stores.steps import smoke_test as step

    return step(s, loaded, exported)


def promote(s: Settings, loaded: StepResult) -> StepResult:
    from recsys_tasks.stores.steps import promote as step

    return step(s, loaded)


def run(s: Settings, until: str = "promote",
        on_step: Callable[[StepResult], Any] | None = None) -> dict[str, StepResult]:
    """Every step in order up to and including `until`; returns the results by step name."""
    if until not in STEPS:
        raise ConfigError(f"until: {until!r} is not a step; steps are {', '.join(STEPS)}")
    r: dict[str, StepResult] = {}
    plan: list[tuple[str, Callable[[], StepResult]]] = [
        ("ingest", lambda: ingest(s)),
        ("validate_raw", lambda: validate_raw(s, r["ingest"])),
        ("preprocess", lambda: preprocess(s, r["ingest"])),
        ("validate_processed", lambda: validate_processed(s, r["preprocess"])),
        ("build_graph", lambda: build_graph(s, r["preprocess"])),
        ("validate_graph", lambda: validate_graph(s, r["build_graph"], r["preprocess"])),
        ("train", lambda: train(s, r["preprocess"], r["build_graph"])),
        ("evaluate", lambda: evaluate(s, r["preprocess"], r["build_graph"], r["train"])),
        ("quality_gate", lambda: quality_gate(s, r["evaluate"])),
        ("export_embeddings", lambda: export_embeddings(s, r["build_graph"], r["train"])),
        ("validate_embeddings", lambda: validate_embeddings(s, r["export_embeddings"], r["preprocess"])),
        ("load_vectors", lambda: load_vectors(s, r["export_embeddings"], r["preprocess"])),
        ("load_catalog", lambda: load_catalog(s, r["preprocess"], r["evaluate"])),
        ("smoke_test", lambda: smoke_test(s, r["load_vectors"], r["export_embeddings"])),
        ("promote", lambda: promote(s, r["load_vectors"])),
    ]
    for name, call in plan:
        r[name] = call()
        if on_step:
            on_step(r[name])
        if name == until:
            break
    return r
