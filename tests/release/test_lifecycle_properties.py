"""Property: whatever operators do, in whatever order, the alias, the registry and the catalog agree and
the live model is the one the promotion rules say.

Operations, drawn at random (hypothesis) and applied to real Milvus Lite + SQLite: a new snapshot's run,
a re-run of an older date (as it was, or with a corrected title), a code edit outside the model (the
release steps get new keys), a rollback, a forced re-run, and a crash between alias switch and registry
update (a rollback killed half way, then the next nightly run). The expected live model is tracked by a
small model of the rules: a run serves its version only if it was never served and its data (newest
rating, then run date) is at least as new as the live one's; a rollback serves the most recently retired.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from recsys_tasks.config import Settings, load_settings
from recsys_tasks.release.promotion import rollback, status
from recsys_tasks.release.registry import Registry
from recsys_tasks.serving.recommend import live
from recsys_tasks.stores import catalog as cat
from recsys_tasks.stores import milvus
from recsys_tasks.stores.catalog import Catalog
from recsys_tasks.stores.milvus import VectorStore, collection_name
from tests.fixtures_stores import Release, make_release, ship, write_processed

OPS = ("new_snapshot", "rerun_older", "rerun_corrected", "code_edit", "rollback", "force", "crash")
FIRST_DAY = date(2026, 11, 1)
PROBE = 11  # the movie whose title each snapshot spells its own way


@dataclass
class Run:
    settings: Settings
    release: Release
    newest: int
    day: date


@dataclass
class World:
    """The system under test and the rules' model of it."""

    base: Settings
    runs: list[Run] = field(default_factory=list)
    live: Run | None = None
    served: list[str] = field(default_factory=list)  # versions ever served
    retired: list[Run] = field(default_factory=list)  # most recently retired last
    titles: dict[str, str] = field(default_factory=dict)  # version -> the probe movie's title in its snapshot

    def dated(self, newest: int, day: date, title: str) -> Run:
        """A run for `day` on a snapshot whose newest rating is `newest` and whose probe title is `title`."""
        s = self.base.replace(run_date=day.isoformat(), keep_versions=10)
        processed = write_processed(s, tag=f"{newest}-{title}", newest=newest, titles={PROBE: title})
        run = Run(s, make_release(s, f"{newest}-{title}", processed=processed), newest, day)
        self.titles[run.release.version] = title
        self.runs.append(run)
        return run

    def ship(self, run: Run, force: bool = False) -> None:
        ship(run.settings.replace(force=force) if force else run.settings, run.release)
        version = run.release.version
        newer = self.live is None or (run.newest, run.day) >= (self.live.newest, self.live.day)
        if version not in self.served and newer:
            self.serve(run)

    def serve(self, run: Run) -> None:
        if self.live is not None and self.live.release.version != run.release.version:
            self.retired = [r for r in self.retired if r.release.version != self.live.release.version] + [self.live]
        self.retired = [r for r in self.retired if r.release.version != run.release.version]
        self.live = run
        self.served.append(run.release.version)


def _check(world: World) -> None:
    st_ = status(world.base)
    assert st_["registry_agrees"], st_
    if world.live is None:
        assert st_["live"] is None
        return
    release = world.live.release
    assert st_["live"]["model_version"] == release.version
    catalog = Catalog.from_settings(world.base)
    assert [r["version"] for r in catalog.versions("active")] == [release.version]
    assert Registry(catalog).active()["version"] == release.version
    # the titles served with the live model are its own snapshot's
    model = live(world.base)
    probe = int(release.ids[PROBE])
    assert model.catalog.movies_by_id([probe], model.catalog_id)[probe]["title"] == world.titles[release.version]


STEPS = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 9)), min_size=2, max_size=7)
SCENARIO = [("new_snapshot", 0), ("new_snapshot", 0), ("rerun_corrected", 0), ("rollback", 0), ("new_snapshot", 0),
            ("crash", 0), ("code_edit", 1), ("force", 2)]  # the scenario, always among the examples


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
@example(steps=SCENARIO)
def test_alias_registry_and_catalog_agree_under_any_sequence(tmp_path: Path, steps: list[tuple[str, int]]) -> None:
    home = tmp_path / uuid.uuid4().hex[:8]
    base = load_settings(home=home)
    world = World(base)
    newest, day = 1_000, FIRST_DAY
    try:
        for op, pick in steps:
            if op == "new_snapshot" or not world.runs:
                newest, day = newest + 100, day + timedelta(days=1)
                world.ship(world.dated(newest, day, title=f"Probe of {day}"))
            elif op in ("rerun_older", "force"):
                world.ship(world.runs[pick % len(world.runs)], force=op == "force")
            elif op == "rerun_corrected":
                old = world.runs[pick % len(world.runs)]
                fixes = sum(r.day == old.day for r in world.runs)
                world.ship(world.dated(old.newest, old.day, title=f"Probe of {old.day}, corrected {fixes}"))
            elif op == "code_edit":  # the release steps' code changed: new keys, no folders yet
                for step in ("load_vectors", "load_catalog", "smoke_test", "promote"):
                    shutil.rmtree(base.artifacts / step, ignore_errors=True)
                world.ship(world.runs[pick % len(world.runs)])
            elif op == "rollback":
                if world.retired:
                    assert rollback(base)["model_version"] == world.retired[-1].release.version
                    world.serve(world.retired[-1])
            elif op == "crash" and world.retired:
                target = world.retired[-1]  # a rollback killed after its alias switch ...
                VectorStore.from_settings(base).point_alias(collection_name(target.release.version))
                world.serve(target)
                world.ship(world.runs[-1])  # ... then the next nightly run: it completes the switch
            _check(world)
    finally:
        milvus.release(base.resolved_milvus_uri)
        cat.dispose(base.resolved_db_url)
