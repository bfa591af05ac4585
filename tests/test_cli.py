"""The CLI contract: `recsys run ... --json` prints one JSON object last; exit 0 / 2 / 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_tasks.__main__ import main
from recsys_tasks.pipeline import NAMES as STEPS

METHODS = {"pinsage_latest", "pinsage_history", "popularity", "itemknn", "transitions"}


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_run_until_evaluate_prints_val_and_test_metrics_then_skips(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", "--synthetic", "120", "--until", "evaluate", "--epochs", "1", "--embed-dim", "16",
            "--device", "cpu", "--home", str(tmp_path), "--json"]
    assert main(args) == 0
    out = _last_json(capsys)
    assert out["ok"] and list(out["steps"]) == list(STEPS[:STEPS.index("evaluate") + 1])
    assert set(out["metrics"]) == {"val", "test"} and all(set(m) == METHODS for m in out["metrics"].values())
    assert all(0 <= m["hr@10"] <= 1 and m["users"] == 120 for split in out["metrics"].values() for m in split.values())
    assert out["model_version"].startswith("v") and len(out["snapshot_id"]) == 16

    assert main(args) == 0
    again = _last_json(capsys)
    assert all(step["skipped"] for step in again["steps"].values())
    assert (again["metrics"], again["model_version"]) == (out["metrics"], out["model_version"])


@pytest.mark.parametrize("flags, message", [(["--embed-dim", "0"], "embed_dim"), (["--epochs", "0"], "epochs")])
def test_bad_settings_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            flags: list[str], message: str) -> None:
    assert main(["train", "--synthetic", "50", "--home", str(tmp_path), "--json", *flags]) == 2
    out = _last_json(capsys)
    assert out == {"ok": False, "command": "train", "error": "ConfigError", "message": out["message"],
                   "report": None}
    assert message in out["message"]
    assert not (tmp_path / "artifacts").exists()  # rejected before any step ran


def test_missing_snapshot_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-release"
    assert main(["ingest", "--snapshot", str(missing), "--home", str(tmp_path), "--json"]) == 2
    assert str(missing) in _last_json(capsys)["message"]


def test_run_on_a_dated_source_reads_the_snapshot_of_its_run_date(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from recsys_tasks.artifacts import load_result
    from recsys_tasks.data.synthetic import write_snapshot

    dated = tmp_path / "snapshots"
    write_snapshot(dated / "2026-11-01", n_users=40, seed=1)
    write_snapshot(dated / "2026-11-08", n_users=60, seed=2)
    users = {}
    for day in ("2026-11-03", "2026-11-09"):
        assert main(["run", "--snapshot", str(dated), "--run-date", day, "--until", "ingest", "--skip-checksum",
                     "--home", str(tmp_path / "home"), "--json"]) == 0
        ingested = load_result(_last_json(capsys)["steps"]["ingest"]["path"])
        users[day] = ingested.manifest["counts"]["users"]
    assert users == {"2026-11-03": 40, "2026-11-09": 60}
