"""Issue 9's user scenario, end to end through the real CLI on the real ml-100k (SQLite catalog, the
default local Milvus): two dated snapshots D1 < D2 cut from ml-100k by rating time.

run D1 -> D1 live; run D2 -> D2 live; correct one title in D1's snapshot and re-run D1 -> D2 stays live
with D2's titles; `recsys rollback` -> D1's model live with D1's titles; re-run D2 -> D1 stays live (a
version that was served before is never served again by a run, only by a rollback).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO, real_release

RECSYS = REPO / ".venv" / "bin" / "recsys"
# Small and fast, yet enough to beat every baseline on ml-100k's validation split (one epoch of 100
# updates at dim 16: hr@10 ~0.163 against transitions ~0.146 on D1).
TRAIN = ["--epochs", "1", "--embed-dim", "16", "--batch-size", "1024", "--lr", "0.03", "--device", "cpu",
         "--skip-checksum"]
# The quality gate's margin against the live model, wide open: D2 was trained on D1's validation ratings,
# so on D1's split it scores above any model of D1 (0.19 vs 0.17), and with the default margin (0.02) the
# gate would reject D1's re-run (exit 2) before promote. What this scenario checks is the promotion
# rules, which hold back a model that passed every gate.
MARGIN = "0.5"
D1, D2 = "2026-11-01", "2026-11-08"
TOY_STORY = 1  # the movie whose title differs between the snapshots
TITLES = {"d1": "Toy Story (1995)",  # ml-100k's own title, in D1's snapshot as first published
          "d2": "Toy Story (Special Edition) (1995)",  # D2's snapshot titles it otherwise
          "d1 corrected": "Toy Story (corrected) (1995)"}  # the title D1's snapshot gets corrected to


def _snapshot(src: Path, dest: Path, ratings: list[str], title: str) -> Path:
    """An ml-100k-layout folder with `ratings` (u.data lines) and TOY_STORY titled `title`."""
    dest.mkdir(parents=True)
    for name in ("u.genre", "u.user", "u.occupation"):
        shutil.copyfile(src / name, dest / name)
    (dest / "u.data").write_text("\n".join(ratings) + "\n")
    _retitle(src / "u.item", dest / "u.item", title)
    return dest


def _retitle(src: Path, dest: Path, title: str) -> None:
    lines = src.read_text(encoding="latin-1").splitlines()
    fields = lines[TOY_STORY - 1].split("|")
    assert fields[0] == str(TOY_STORY) and fields[1].startswith("Toy Story")
    lines[TOY_STORY - 1] = "|".join([fields[0], title, *fields[2:]])
    dest.write_text("\n".join(lines) + "\n", encoding="latin-1")


@pytest.fixture
def snapshots(tmp_path: Path) -> dict[str, Path]:
    """D1: the ratings up to the 70% quantile of their timestamps; D2: all of them."""
    src = real_release("ml-100k")
    ratings = (src / "u.data").read_text().splitlines()
    stamps = np.array([int(line.split("\t")[3]) for line in ratings])
    cut = int(np.quantile(stamps, 0.7))
    dated = tmp_path / "snapshots"
    return {D1: _snapshot(src, dated / D1, [r for r, t in zip(ratings, stamps) if t <= cut], TITLES["d1"]),
            D2: _snapshot(src, dated / D2, ratings, TITLES["d2"])}


def _cli(home: Path, *args: str, code: int = 0) -> dict[str, Any]:
    env = {**os.environ, "RECSYS_HOME": str(home), "RECSYS_QUALITY_MARGIN": MARGIN}
    for var in ("RECSYS_DB_URL", "RECSYS_MILVUS_URI", "RECSYS_SNAPSHOT", "RECSYS_RUN_DATE", "RECSYS_FORCE",
                "RECSYS_KEEP_VERSIONS"):
        env.pop(var, None)
    out = subprocess.run([str(RECSYS), *args, "--json"], env=env, capture_output=True, text=True, timeout=600,
                         check=False, cwd=REPO)
    assert out.returncode == code, f"recsys {' '.join(args)}: exit {out.returncode}\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.splitlines()[-1])


def _run(home: Path, snapshots: dict[str, Path], day: str) -> dict[str, Any]:
    return _cli(home, "run", "--snapshot", str(snapshots[day]), "--run-date", day, *TRAIN)


def _served_title(home: Path) -> tuple[str, str]:
    """(the model version that answers, TOY_STORY's title as that answer shows it)."""
    answer = _cli(home, "recommend", "--history", str(TOY_STORY), "-k", "5")
    titles = {item["because"]["title"] for item in answer["items"]}  # every item is "because" the one history movie
    assert len(titles) == 1, answer
    return answer["model_version"], titles.pop()


def _catalog_title(home: Path, version: str) -> str:
    """TOY_STORY's title in the catalog that `version` is registered with (straight from the SQLite file)."""
    from recsys_tasks.stores.catalog import Catalog, dispose

    url = f"sqlite:///{home / 'catalog.db'}"
    try:
        catalog = Catalog(url)
        return catalog.movies_by_id([TOY_STORY], catalog.version(version)["catalog_id"])[TOY_STORY]["title"]
    finally:
        dispose(url)


def _registry(home: Path) -> dict[str, str]:
    """{model version: registry status} of every loaded collection, from `recsys status`; checks that the
    registry agrees with the alias."""
    st = _cli(home, "status")
    assert st["registry_agrees"], st
    return {c["model_version"]: c["status"] for c in st["collections"]}


@pytest.mark.slow
def test_backfill_rerun_rollback_and_rerun_on_ml100k(snapshots: dict[str, Path], tmp_path: Path) -> None:
    home = tmp_path / "home"

    first = _run(home, snapshots, D1)
    v1 = first["model_version"]
    assert first["promotion"] == {"moved": True, "live": v1, "held_back": None}
    assert _served_title(home) == (v1, TITLES["d1"])

    second = _run(home, snapshots, D2)
    v2 = second["model_version"]
    assert v2 != v1 and second["promotion"] == {"moved": True, "live": v2, "held_back": None}
    assert _served_title(home) == (v2, TITLES["d2"])
    assert _registry(home) == {v1: "retired", v2: "active"}

    # D1's snapshot gets one corrected title, and D1 is re-run (a backfill): a new model on older data
    _retitle(snapshots[D2] / "u.item", snapshots[D1] / "u.item", TITLES["d1 corrected"])
    rerun = _run(home, snapshots, D1)
    v1b = rerun["model_version"]
    assert v1b not in (v1, v2)  # new titles, new title tokens: another model version
    assert not rerun["promotion"]["moved"] and rerun["promotion"]["live"] == v2
    assert "older data" in rerun["promotion"]["held_back"]  # said plainly, exit 0
    assert _served_title(home) == (v2, TITLES["d2"])  # D2 stays live with D2's titles
    assert _catalog_title(home, v1b) == TITLES["d1 corrected"]  # loaded under its own catalog, not served
    assert _catalog_title(home, v1) == TITLES["d1"]
    assert _registry(home) == {v1: "retired", v2: "active", v1b: "candidate"}

    # rollback serves the most recently retired version: D1's model as it was served, with the titles of
    # the snapshot it was trained on. The corrected re-run was never served, so it is no rollback target.
    back = _cli(home, "rollback")
    assert (back["model_version"], back["previous"], back["changed"]) == (v1, v2, True)
    assert _served_title(home) == (v1, TITLES["d1"])
    refused = _cli(home, "rollback", "--to", v1b, code=2)
    assert "only a version that was served" in refused["message"]
    assert _registry(home) == {v1: "active", v2: "retired", v1b: "candidate"}

    # re-run D2: D2 was served before (promoted_at is set), so by the promotion rules no run serves it
    # again, however new its data: the rollback is not undone. Every step finds its outputs and skips
    # (but smoke_test, which always checks the stores as they are now); promote's skip is "decided by an
    # earlier run".
    again = _run(home, snapshots, D2)
    assert again["model_version"] == v2
    assert [name for name, step in again["steps"].items() if not step["skipped"]] == ["smoke_test"]
    assert again["promotion"] == {"moved": False, "live": v1, "held_back": "decided by an earlier run"}
    assert _served_title(home) == (v1, TITLES["d1"])
    assert _registry(home) == {v1: "active", v2: "retired", v1b: "candidate"}
