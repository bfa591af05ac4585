"""Quality gate, smoke test, promotion, retention, status and rollback: what is served, and when."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_tasks import pipeline
from recsys_tasks.__main__ import main
from recsys_tasks.config import Settings
from recsys_tasks.errors import GateFailure, InputError
from recsys_tasks.release.promotion import rollback, status
from recsys_tasks.release.registry import Registry
from recsys_tasks.serving.recommend import recommend_similar
from recsys_tasks.stores.catalog import Catalog
from recsys_tasks.stores.milvus import VectorStore, collection_name
from tests.fixtures_stores import Release, gate, make_release, ship

FLOWS = [pytest.param(("lite", "sqlite"), id="lite-sqlite"),
         pytest.param(("server", "mariadb"), id="server-mariadb", marks=pytest.mark.mysql)]


def _served(settings: Settings, release: Release, index: int = 7) -> tuple[str, list[int]]:
    """(model version, ids) the live alias returns for `release`'s movie at `index`."""
    result = recommend_similar(settings, int(release.ids[index]), 10)
    return result["model_version"], [i["movie_id"] for i in result["items"]]


def _live(settings: Settings) -> str | None:
    return VectorStore.from_settings(settings).live_collection()


@pytest.mark.parametrize("stores", FLOWS, indirect=True)
def test_promotion_switches_the_alias_and_rollback_returns(stores: Settings) -> None:
    v1 = make_release(stores, "one")
    v2 = make_release(stores, "two", processed=v1.processed, hr=0.11)
    ship(stores, v1)
    movie = int(v1.ids[7])
    assert _served(stores, v1) == (v1.version, v1.brute_force(v1.vectors[7], 10, exclude={movie}))

    steps = ship(stores, v2)
    assert steps["promote"].manifest["previous"] == v1.version
    assert _served(stores, v2) == (v2.version, v2.brute_force(v2.vectors[7], 10, exclude={movie}))
    catalog = Catalog.from_settings(stores)
    assert (catalog.version(v1.version)["status"], catalog.version(v2.version)["status"]) == ("retired", "active")

    again = ship(stores, v2)  # the whole store half of the pipeline again: nothing changes
    assert again["load_vectors"].skipped and again["load_catalog"].skipped and again["promote"].skipped
    assert _live(stores) == collection_name(v2.version)

    st = status(stores)
    assert st["live"]["model_version"] == v2.version and st["live"]["snapshot_id"] == "snapshot-catalog"
    assert st["live"]["metrics"]["val"]["pinsage_history"]["hr@10"] == 0.11
    assert {c["model_version"]: c["status"] for c in st["collections"]} == {v1.version: "retired",
                                                                            v2.version: "active"}
    assert st["counts"]["movies"] == 300 and st["counts"]["vectors"] == 300

    back = rollback(stores)
    assert back == {"model_version": v1.version, "collection": collection_name(v1.version),
                    "previous": v2.version, "changed": True}
    assert _served(stores, v1) == (v1.version, v1.brute_force(v1.vectors[7], 10, exclude={movie}))
    assert (catalog.version(v1.version)["status"], catalog.version(v2.version)["status"]) == ("active", "retired")
    assert rollback(stores, v1.version)["changed"] is False


def test_failed_smoke_test_keeps_the_live_model(stores: Settings) -> None:
    v1 = make_release(stores, "one")
    ship(stores, v1)
    bad = make_release(stores, "bad", processed=v1.processed, hr=0.12, extra_ids=5)  # vectors without records
    with pytest.raises(GateFailure) as failure:
        ship(stores, bad)
    assert failure.value.rule == "smoke_test" and "no catalog record" in str(failure.value)
    report = json.loads(Path(failure.value.report).read_text())
    assert report["passed"] is False and report["problems"]
    assert _live(stores) == collection_name(v1.version)
    catalog = Catalog.from_settings(stores)
    assert catalog.version(bad.version)["status"] == "rejected"
    assert catalog.version(bad.version)["reason"].startswith("smoke_test")
    assert Registry(catalog).active()["version"] == v1.version

    loaded = pipeline.load_vectors(stores, bad.exported, bad.processed)
    with pytest.raises(GateFailure, match="rejected"):
        pipeline.promote(stores, gate(stores, bad), loaded)
    assert _live(stores) == collection_name(v1.version)


def test_quality_gate_judges_on_validation_against_baselines_and_the_live_model(stores: Settings) -> None:
    v1 = make_release(stores, "one", hr=0.9, truth=True)  # the live model follows the users' tastes exactly
    ship(stores, v1)
    worse = make_release(stores, "worse", processed=v1.processed, hr=0.5)
    with pytest.raises(GateFailure) as failure:
        gate(stores, worse)
    # the live model scored on the candidate's own validation split hits every target: hr@10 1.0
    assert failure.value.rule == "no_regression" and "0.5000" in str(failure.value) and "1.0000" in str(failure.value)
    decision = json.loads(Path(failure.value.report).read_text())
    assert decision["passed"] is False and decision["split"] == "val"
    assert decision["champion"]["version"] == v1.version and decision["champion"]["hr@10"] == 1.0
    catalog = Catalog.from_settings(stores)
    row = catalog.version(worse.version)
    assert row["status"] == "rejected" and "no_regression" in row["reason"]
    assert row["metrics"]["val"]["pinsage_history"]["hr@10"] == 0.5
    assert _live(stores) == collection_name(v1.version) and Registry(catalog).active()["version"] == v1.version
    with pytest.raises(GateFailure) as again:  # the verdict stands: not judged again, the same failure
        gate(stores, worse)
    assert str(again.value) == str(failure.value)

    weak = make_release(stores, "weak", processed=v1.processed, hr=0.045, baselines=(0.04, 0.05))
    with pytest.raises(GateFailure) as failure:
        gate(stores, weak)
    assert failure.value.rule == "beats_baselines" and "itemknn" in str(failure.value)

    close = make_release(stores, "close", processed=v1.processed, hr=0.985)  # within the 0.02 margin
    passed = gate(stores, close)
    assert passed.manifest["decision"]["passed"] and catalog.version(close.version)["status"] == "candidate"
    # test figures are recorded, never used: a candidate with a worse test than validation still passes
    assert passed.manifest["decision"]["test_hr@10"]["pinsage_history"] < 0.985


def test_a_candidate_is_judged_again_when_the_live_model_changed_since_its_gate(stores: Settings) -> None:
    base = make_release(stores, "base", hr=0.2)
    ship(stores, base)
    weaker = make_release(stores, "weaker", processed=base.processed, hr=0.5)
    judged = gate(stores, weaker)  # judged against `base` (random vectors): it passes
    assert judged.manifest["decision"]["champion"]["version"] == base.version
    strong = make_release(stores, "strong", processed=base.processed, hr=0.9, truth=True)
    assert ship(stores, strong)["promote"].manifest["moved"]  # another run promotes a better model meanwhile
    loaded = pipeline.load_vectors(stores, weaker.exported, weaker.processed)
    pipeline.load_catalog(stores, weaker.processed, weaker.evaluated)
    promoted = pipeline.promote(stores, judged, loaded)
    assert not promoted.manifest["moved"] and "no_regression" in promoted.manifest["held_back"]
    assert _live(stores) == collection_name(strong.version)
    assert Catalog.from_settings(stores).version(weaker.version)["status"] == "rejected"


def test_retention_keeps_the_last_versions_and_drops_the_rest(stores: Settings) -> None:
    settings = stores.replace(keep_versions=1)
    releases = [make_release(settings, f"r{i}", hr=0.10 + i / 100) for i in range(3)]
    bad = make_release(settings, "bad", processed=releases[0].processed, hr=0.2, extra_ids=3)
    ship(settings, releases[0])
    with pytest.raises(GateFailure):
        ship(settings, bad)
    for release in releases[1:]:
        steps = ship(settings, release)
    assert steps["promote"].manifest["dropped"] == [collection_name(releases[0].version)]
    store = VectorStore.from_settings(settings)
    assert store.collections() == sorted(collection_name(r.version) for r in releases[1:])  # bad one dropped
    assert store.live_collection() == collection_name(releases[2].version)
    with pytest.raises(InputError, match="gone or incomplete"):
        rollback(settings, releases[0].version)


def test_cli_status_rollback_and_recommend(stores: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(stores.home)]
    assert main(["recommend", "--movie-id", "1", "--json", *home]) == 1  # nothing live yet
    assert "no model is served" in json.loads(capsys.readouterr().out.splitlines()[-1])["message"]
    v1 = make_release(stores, "one")
    ship(stores, v1)
    assert main(["status", "--json", *home]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["live"]["model_version"] == v1.version
    assert main(["recommend", "--movie-id", str(v1.ids[0]), "-k", "3", "--json", *home]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert len(out["items"]) == 3 and out["model_version"] == v1.version
    assert main(["recommend", "--movie-id", "999999999", "--json", *home]) == 2
    assert main(["recommend", "--history", f"{v1.ids[0]},{v1.ids[1]}", "-k", "101", "--json", *home]) == 2
    assert main(["rollback", "--json", *home]) == 2  # nothing retired to go back to
    assert main(["rollback", "--to", "vdoesnotexist", "--json", *home]) == 2
    capsys.readouterr()


def test_rerunning_an_older_version_changes_nothing(stores: Settings) -> None:
    """A backfill re-run of an earlier date: its gate and promotion stand, the newer model stays live."""
    v1 = make_release(stores, "one", hr=0.10)
    v2 = make_release(stores, "two", processed=v1.processed, hr=0.20)
    ship(stores, v1)
    ship(stores, v2)
    catalog = Catalog.from_settings(stores)
    before = {r["version"]: (r["status"], r["promoted_at"]) for r in catalog.versions()}
    again = ship(stores, v1)  # v1 is now 0.10 below the live model: it must not be re-judged against v2
    assert again["quality_gate"].skipped and again["promote"].skipped
    assert _live(stores) == collection_name(v2.version)
    assert {r["version"]: (r["status"], r["promoted_at"]) for r in catalog.versions()} == before
