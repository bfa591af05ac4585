"""The idempotency contract: skip when done, atomic replace, failed outputs kept aside."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_tasks.artifacts import load_result, read_json, run_step, tree_fingerprint
from recsys_tasks.errors import InputError


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
