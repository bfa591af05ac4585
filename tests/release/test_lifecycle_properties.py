"""Property: whatever operators do, in whatever order, the alias, the registry and the catalog agree and
the live model is the one the promotion rules say.

Operations, drawn by hypothesis (derandomized: the same sequences on every run) and applied to real Milvus
Lite + SQLite through the release steps as `pipeline.run` calls them:

- new_snapshot: the next date's run, on a snapshot with newer ratings;
- rerun_older / rerun_corrected: a re-run of an earlier run, as it was, or on its date's snapshot with the
  probe movie's title corrected (a new model version on data exactly as new as the original's);
- code_edit: a deploy that edits one module outside model/, graph/ and data/, then the nightly re-run of
  the newest snapshot. The edit is real source text: a line of code appended to that module in a copy of
  the package that the step-key derivation reads (`artifacts._PACKAGE_ROOT`, as tests/test_artifacts.py
  does), so the real derivation decides which release steps get new keys and run again (a serving/ edit
  only the steps that import serving, a stores/ edit all five). The code that runs stays the package as
  imported, and the runs' data and model steps, built once by the fixtures, are not derived again: that
  such an edit leaves their keys alone is what tests/release/test_code_edits.py checks, on an edited copy
  of the package run as a subprocess. The invariant checked here: a code edit never changes which model
  is live (it may only complete a crashed switch, which leaves the alias where it is);
- rollback (with nothing retired: refused, after completing any crashed switch);
- force: a forced re-run of an earlier run;
- crash: a process that dies right after the alias switch, before the registry update (Registry.activate
  raising for that action, as in test_promotion_rules.py), in a new snapshot's promotion or in a rollback.
  Right after it the alias serves the new model (with its own titles) while the registry lags; the next
  operation, whichever it is, must complete that switch.

The expected live model comes from `World`, a small model of the rules: a run serves its version only if it
was never served (a crashed promotion counts as served: the alias is the commit point) and its data (newest
rating, then run date) is at least as new as the live one's; a rollback serves the most recently retired.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from recsys_tasks import artifacts
from recsys_tasks.artifacts import StepResult
from recsys_tasks.config import Settings, load_settings
from recsys_tasks.errors import InputError
from recsys_tasks.release.promotion import moved, rollback, status
from recsys_tasks.release.registry import Registry
from recsys_tasks.serving.recommend import live
from recsys_tasks.stores import catalog as cat
from recsys_tasks.stores import milvus
from recsys_tasks.stores.catalog import Catalog
from tests.fixtures_stores import Release, make_release, ship, write_processed
from tests.release.test_promotion_rules import Killed

OPS = ("new_snapshot", "rerun_older", "rerun_corrected", "code_edit", "rollback", "force", "crash")
EDITABLE = ("serving/recommend.py", "serving/histories.py", "release/promotion.py", "release/gate.py",
            "stores/milvus.py", "validation/report.py")  # outside model/, graph/ and data/
FIRST_DAY = date(2026, 11, 1)
PROBE = 11  # the movie whose title each snapshot spells its own way


@dataclass
class Run:
    name: str  # D1, D2, ... by date; "D1 fix 1" for a re-run of D1 on its corrected snapshot
    settings: Settings
    release: Release
    newest: int
    day: date
    title: str  # the probe movie's title in this run's snapshot

    @property
    def version(self) -> str:
        return self.release.version

    @property
    def recency(self) -> tuple[int, date]:
        return self.newest, self.day


@dataclass
class Behind:
    """After a crash between alias switch and registry update: what the registry still says."""

    active: str | None  # the version the registry still calls active
    status: str  # the served version's status in the registry: candidate (a promotion), retired (a rollback)


@dataclass
class World:
    """The system under test and the rules' model of it."""

    base: Settings
    runs: list[Run] = field(default_factory=list)
    live: Run | None = None  # the run whose model the alias serves
    served: list[str] = field(default_factory=list)  # versions ever served
    retired: list[Run] = field(default_factory=list)  # most recently retired last
    behind: Behind | None = None  # set by a crash, cleared by the next operation (which must complete it)

    def dated(self, newest: int, day: date, title: str, name: str) -> Run:
        """A run for `day` on a snapshot whose newest rating is `newest` and whose probe title is `title`."""
        s = self.base.replace(run_date=day.isoformat(), keep_versions=10)
        processed = write_processed(s, tag=f"{newest}-{title}", newest=newest, titles={PROBE: title})
        run = Run(name, s, make_release(s, f"{newest}-{title}", processed=processed), newest, day, title)
        self.runs.append(run)
        return run

    def next_snapshot(self) -> Run:
        newest, day = max(((r.newest, r.day) for r in self.runs), default=(1_000, FIRST_DAY - timedelta(days=1)))
        day += timedelta(days=1)
        return self.dated(newest + 100, day, f"Probe of {day}", f"D{len({r.day for r in self.runs}) + 1}")

    def corrected(self, old: Run) -> Run:
        fixes = sum(r.day == old.day for r in self.runs)
        name = f"{old.name.split()[0]} fix {fixes}"
        return self.dated(old.newest, old.day, f"Probe of {old.day}, corrected {fixes}", name)

    def newest(self) -> Run:
        """The run on the newest snapshot (the latest of equally new ones): what the nightly run re-runs."""
        return max(reversed(self.runs), key=lambda r: r.recency)

    def ship(self, run: Run, force: bool = False) -> dict[str, StepResult]:
        """Run the release steps for `run` and apply the rules; the run's promote `moved` exactly when the
        rules serve its version now, or when it completed its own crashed promotion."""
        completes = self.behind is not None and self.behind.status == "candidate" and self.live is run
        self.behind = None
        steps = ship(run.settings.replace(force=force) if force else run.settings, run.release)
        serves = run.version not in self.served and (self.live is None or run.recency >= self.live.recency)
        if serves:
            self.serve(run)
        assert moved(steps["promote"]) == (serves or completes), (run.name, steps["promote"].manifest)
        return steps

    def serve(self, run: Run) -> None:
        if self.live is not None and self.live is not run:
            self.retired = [r for r in self.retired if r is not self.live] + [self.live]
        self.retired = [r for r in self.retired if r is not run]
        self.live = run
        if run.version not in self.served:
            self.served.append(run.version)

    def crashed(self, run: Run, status: str) -> None:
        """The alias switched to `run` and the process died before the registry update."""
        self.behind = Behind(self.live and self.live.version, status)
        self.serve(run)


@contextmanager
def _dies_after_the_alias_switch(action: str) -> Iterator[None]:
    """The process dies once `action` (promote or rollback) has switched the alias: `Release.serve` switches
    the alias, then updates the registry with `Registry.activate`, which here kills it instead."""
    registry_update = Registry.activate

    def killed_for_action(registry: Registry, version: str, by: str, reason: str) -> str | None:
        if by == action:
            raise Killed
        return registry_update(registry, version, by, reason)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Killed):
        patch.setattr(Registry, "activate", killed_for_action)
        yield


class Deploys:
    """Code edits as the step-key derivation sees them: lines of code appended to modules in a copy of the
    package (made at the first edit) that `artifacts` reads instead of the installed one."""

    def __init__(self, patch: pytest.MonkeyPatch, folder: Path) -> None:
        self.patch, self.folder, self.count = patch, folder, 0

    def edit(self, module: str) -> None:
        copy = self.folder / "recsys_tasks"
        if not self.count:
            shutil.copytree(Path(artifacts.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
            self.patch.setattr(artifacts, "_PACKAGE_ROOT", copy)
        self.count += 1
        path = copy / module
        path.write_text(path.read_text() + f"\nDEPLOYED_{self.count} = {self.count}  # the deploy's code change\n")
        artifacts.module_fingerprint.cache_clear()


def _served(world: World) -> str | None:
    """The version the alias serves."""
    return (status(world.base)["live"] or {}).get("model_version")


def _check(world: World) -> None:
    st_ = status(world.base)
    rows = Catalog.from_settings(world.base).versions()
    if world.live is None:
        assert st_["live"] is None and st_["registry_agrees"] and not rows
        return
    assert st_["live"]["model_version"] == world.live.version  # the alias serves what the rules say
    # serving follows the alias, with the titles of the served model's own snapshot (also while the
    # registry lags after a crash)
    model = live(world.base)
    probe = int(world.live.release.ids[PROBE])
    assert model.catalog.movies_by_id([probe], model.catalog_id)[probe]["title"] == world.live.title
    registry = {r["version"]: r for r in rows}
    if world.behind is not None:  # right after a crash: the registry is one switch behind the alias
        assert not st_["registry_agrees"], st_
        assert (Registry(Catalog.from_settings(world.base)).active() or {}).get("version") == world.behind.active
        assert registry[world.live.version]["status"] == world.behind.status
        return
    assert st_["registry_agrees"], st_
    expected = ({r.version: "candidate" for r in world.runs} | {r.version: "retired" for r in world.retired}
                | {world.live.version: "active"})
    assert {v: r["status"] for v, r in registry.items()} == expected
    assert {v for v, r in registry.items() if r["promoted_at"] is not None} == set(world.served)


def _apply(world: World, deploys: Deploys, op: str, pick: int) -> None:
    if op == "new_snapshot" or (not world.runs and op != "crash"):
        world.ship(world.next_snapshot())
    elif op in ("rerun_older", "force"):
        world.ship(world.runs[pick % len(world.runs)], force=op == "force")
    elif op == "rerun_corrected":
        world.ship(world.corrected(world.runs[pick % len(world.runs)]))
    elif op == "code_edit":
        before = _served(world)
        deploys.edit(EDITABLE[pick % len(EDITABLE)])
        world.ship(world.newest())
        assert _served(world) == before, "a code edit changed which model is live"
    elif op == "rollback":
        world.behind = None
        if world.retired:
            assert rollback(world.base)["model_version"] == world.retired[-1].version
            world.serve(world.retired[-1])
        else:
            with pytest.raises(InputError, match="no retired model version"):
                rollback(world.base)
    elif op == "crash" and pick % 2 and world.retired:  # a rollback dies after its alias switch
        target = world.retired[-1]
        with _dies_after_the_alias_switch("rollback"):
            rollback(world.base)
        world.crashed(target, "retired")
    else:  # a new snapshot's promotion dies after its alias switch
        run = world.next_snapshot()
        with _dies_after_the_alias_switch("promote"):
            ship(run.settings, run.release)
        world.crashed(run, "candidate")


STEPS = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 9)), min_size=2, max_size=8)
# issue 9's scenario: D1 live, D2 live, D1 re-run with a corrected title (D2 stays live with D2's titles),
# rollback (D1 live with D1's titles), re-run D2 (served before, so by the rules D1 stays live)
SCENARIO = [("new_snapshot", 0), ("new_snapshot", 0), ("rerun_corrected", 0), ("rollback", 0), ("rerun_older", 1)]
# crashes: D2's promotion dies (D2 served), its re-run completes it; a rollback to D1 dies, a deploy that
# edits stores/ completes it (D1 stays), a rollback serves D2 again, a forced re-run of D2 changes nothing
CRASHES = [("new_snapshot", 0), ("crash", 0), ("rerun_older", 1), ("crash", 1), ("code_edit", 4), ("rollback", 0),
           ("force", 1)]
# what follows a crash: D2's promotion dies, a forced re-run of D2 completes it; a rollback to D1 dies, and
# D1's corrected re-run (data as new as D1's, never served) completes it and goes live; D3's promotion dies,
# the next snapshot completes it and replaces D3
FOLLOW_UPS = [("new_snapshot", 0), ("crash", 0), ("force", 1), ("crash", 1), ("rerun_corrected", 0), ("crash", 0),
              ("new_snapshot", 0)]
# the very first promotion dies; a rollback finds nothing retired, after completing it
FIRST_CRASH = [("crash", 0), ("rollback", 0), ("new_snapshot", 0)]


@pytest.mark.slow
@settings(max_examples=12, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS, expected=st.none())
@example(steps=SCENARIO, expected=["D1", "D2", "D2", "D1", "D1"])
@example(steps=CRASHES, expected=["D1", "D2", "D2", "D1", "D1", "D2", "D2"])
@example(steps=FOLLOW_UPS, expected=["D1", "D2", "D2", "D1", "D1 fix 1", "D3", "D4"])
@example(steps=FIRST_CRASH, expected=["D1", "D1", "D2"])
def test_alias_registry_and_catalog_agree_under_any_sequence(tmp_path: Path, steps: list[tuple[str, int]],
                                                             expected: list[str] | None) -> None:
    """`expected`, for the explicit examples: the run whose model is live after each step."""
    home = tmp_path / uuid.uuid4().hex[:8]
    base = load_settings(home=home)
    world = World(base)
    trace = []
    try:
        with pytest.MonkeyPatch.context() as patch:
            deploys = Deploys(patch, home / "deployed")
            for op, pick in steps:
                _apply(world, deploys, op, pick)
                _check(world)
                trace.append(world.live and world.live.name)
        assert expected is None or trace == expected
    finally:
        artifacts.module_fingerprint.cache_clear()  # keys from the installed package again
        milvus.release(base.resolved_milvus_uri)
        cat.dispose(base.resolved_db_url)
