"""The idempotency contract: skip when done, atomic replace, failed outputs kept aside."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from recsys_tasks.artifacts import load_result, read_json, run_step, step_key, tree_fingerprint
from recsys_tasks.errors import GateFailure, InputError


def _writer(calls: list[int], text: str = "hello"):
    def build(tmp: Path) -> dict:
        calls.append(1)
        (tmp / "out.txt").write_text(text)
        return {"counts": {"rows": 1}}
    return build


def test_second_run_is_skipped_and_outputs_unchanged(tmp_path: Path) -> None:
    calls: list[int] = []
    first = run_step(tmp_path, "demo", inputs={"a": "1"}, params={"p": 1}, build=_writer(calls))
    before = tree_fingerprint(first.path)
    second = run_step(tmp_path, "demo", inputs={"a": "1"}, params={"p": 1}, build=_writer(calls))
    assert (first.skipped, second.skipped) == (False, True)
    assert len(calls) == 1
    assert second.path == first.path and tree_fingerprint(second.path) == before
    manifest = read_json(first.path / "manifest.json")
    assert manifest["outputs"].keys() == {"out.txt"} and manifest["counts"] == {"rows": 1}
    assert load_result(first.path).key == first.key


def test_changed_input_or_param_gets_a_new_folder(tmp_path: Path) -> None:
    calls: list[int] = []
    a = run_step(tmp_path, "demo", inputs={"a": "1"}, params={"p": 1}, build=_writer(calls))
    b = run_step(tmp_path, "demo", inputs={"a": "2"}, params={"p": 1}, build=_writer(calls))
    c = run_step(tmp_path, "demo", inputs={"a": "1"}, params={"p": 2}, build=_writer(calls))
    assert len({a.path, b.path, c.path}) == 3 and len(calls) == 3


def test_force_rebuilds_in_place(tmp_path: Path) -> None:
    calls: list[int] = []
    a = run_step(tmp_path, "demo", inputs={}, params={}, build=_writer(calls, "one"))
    b = run_step(tmp_path, "demo", inputs={}, params={}, build=_writer(calls, "two"), force=True)
    assert a.path == b.path and not b.skipped and (b.path / "out.txt").read_text() == "two"
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [a.path.name]  # no temp folders left


def test_bad_input_keeps_good_outputs_and_the_failed_report(tmp_path: Path) -> None:
    good = run_step(tmp_path, "demo", inputs={}, params={}, build=_writer([]))
    before = tree_fingerprint(good.path)

    def failing(tmp: Path) -> dict:
        (tmp / "report.json").write_text("{}")
        raise InputError("bad rows", file="x.csv", row=3, rule="unique ids")

    with pytest.raises(InputError, match=r"bad rows \(file x.csv, row 3, rule unique ids\)"):
        run_step(tmp_path, "demo", inputs={}, params={}, build=failing, force=True)
    assert tree_fingerprint(good.path) == before
    assert (tmp_path / "demo" / f"{good.key}.failed" / "report.json").is_file()


def test_crash_leaves_no_partial_folder(tmp_path: Path) -> None:
    def crash(tmp: Path) -> dict:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_step(tmp_path, "demo", inputs={}, params={}, build=crash)
    assert list((tmp_path / "demo").iterdir()) == []


def _slow_build(root: str, marker: str) -> str:
    """Run in another process: build step `slow` (recording each build in `marker`), return skipped-or-not."""
    def build(tmp: Path) -> dict:
        with open(marker, "a") as fh:
            fh.write("built\n")
        time.sleep(1.5)  # long enough for the other process to find the lock held
        (tmp / "out.txt").write_text("x")
        return {}

    return str(run_step(Path(root), "slow", inputs={"a": 1}, params={}, build=build).skipped)


def test_two_processes_build_a_key_once_the_other_waits_and_skips(tmp_path: Path) -> None:
    import multiprocessing

    marker = tmp_path / "builds.txt"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        skipped = sorted(pool.starmap(_slow_build, [(str(tmp_path), str(marker))] * 2))
    assert skipped == ["False", "True"] and marker.read_text() == "built\n"


def test_a_killed_builders_leftovers_are_removed(tmp_path: Path) -> None:
    def build(tmp: Path) -> dict:
        (tmp / "out.txt").write_text("x")
        return {}

    key = step_key("s", {"a": 1}, {}, module=__name__)
    (tmp_path / "s" / f".tmp-{key}-deadbeef").mkdir(parents=True)
    (tmp_path / "s" / f".old-{key}-deadbeef").mkdir()
    (tmp_path / "s" / ".tmp-otherkey-deadbeef").mkdir()  # another key's builder may be alive: left alone
    run_step(tmp_path, "s", inputs={"a": 1}, params={}, build=build)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".tmp-otherkey-deadbeef", key]


def test_a_failed_gates_verdict_stands_until_forced(tmp_path: Path) -> None:
    calls = []

    def gate(tmp: Path) -> dict:
        calls.append(1)
        raise GateFailure("too few rows", rule="min_rows", file="x.parquet")

    for _ in range(2):
        with pytest.raises(GateFailure) as failure:
            run_step(tmp_path, "g", inputs={}, params={}, build=gate)
        assert failure.value.rule == "min_rows" and str(failure.value) == "too few rows (file x.parquet, rule min_rows)"
    assert len(calls) == 1
    with pytest.raises(GateFailure):
        run_step(tmp_path, "g", inputs={}, params={}, build=gate, force=True)
    assert len(calls) == 2


def test_a_step_key_follows_the_code_it_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from recsys_tasks import artifacts

    train = artifacts.module_fingerprint("recsys_tasks.model.train")
    assert train == artifacts.module_fingerprint("recsys_tasks.model.train")
    copy = tmp_path / "recsys_tasks"
    shutil.copytree(Path(artifacts.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(artifacts, "_PACKAGE_ROOT", copy)

    def fingerprint_after(edit: str, text: str) -> str:
        path = copy / edit
        path.write_text(path.read_text() + text)
        artifacts.module_fingerprint.cache_clear()
        return artifacts.module_fingerprint("recsys_tasks.model.train")

    assert fingerprint_after("model/train.py", "\n# a comment\n") == train  # comments are not code
    assert fingerprint_after("serving/api.py", "\nX = 1\n") == train
    assert fingerprint_after("release/gate.py", "\nX = 1\n") == train
    assert fingerprint_after("config.py", "\nX = 1\n") == train  # plumbing: settings reach keys as params
    assert fingerprint_after("graph/sampler.py", "\nX = 1\n") != train
    artifacts.module_fingerprint.cache_clear()
