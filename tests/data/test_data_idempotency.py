"""Re-running ingest/preprocess changes nothing; forced re-runs write the same bytes; new data, new id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from recsys_tasks.artifacts import dir_checksums
from recsys_tasks.data.ingest import ingest_snapshot
from recsys_tasks.data.preprocess import preprocess


def test_second_run_is_skipped_and_forced_runs_are_byte_identical(
        synthetic: Callable[..., Path], tmp_path: Path, digest: Callable[[Path], dict[str, str]]) -> None:
    source, root, dl = str(synthetic("ml-1m")), tmp_path / "artifacts", tmp_path / "dl"
    ingested = ingest_snapshot(source, root, downloads=dl, skip_checksum=True)
    processed = preprocess(ingested, root)
    assert not ingested.skipped and not processed.skipped
    before = {"ingest": digest(ingested.path), "preprocess": digest(processed.path)}

    again = ingest_snapshot(source, root, downloads=dl, skip_checksum=True)
    again_processed = preprocess(again, root)
    assert again.skipped and again_processed.skipped
    assert again.manifest == ingested.manifest and again_processed.manifest == processed.manifest
    assert {"ingest": digest(again.path), "preprocess": digest(again_processed.path)} == before

    forced = ingest_snapshot(source, root, downloads=dl, skip_checksum=True, force=True)
    forced_processed = preprocess(forced, root, force=True)
    assert not forced.skipped and not forced_processed.skipped
    assert (forced.path, forced_processed.path) == (ingested.path, processed.path)
    manifest_free = {k: v for k, v in before["ingest"].items() if k != "manifest.json"}
    assert dir_checksums(forced.path) == manifest_free
    assert dir_checksums(forced_processed.path) == {k: v for k, v in before["preprocess"].items()
                                                    if k != "manifest.json"}
    assert forced.manifest["outputs"] == ingested.manifest["outputs"]


def test_changed_input_gets_a_new_snapshot_id(synthetic: Callable[..., Path], tmp_path: Path,
                                              copy_of: Callable[[Path], Path]) -> None:
    root, dl = tmp_path / "artifacts", tmp_path / "dl"
    original = ingest_snapshot(str(synthetic("ml-1m")), root, downloads=dl, skip_checksum=True)
    changed_src = copy_of(synthetic("ml-1m"))
    ratings = changed_src / "ratings.dat"
    first, rest = ratings.read_bytes().split(b"\n", 1)
    fields = first.split(b"::")
    fields[2] = b"1" if fields[2] != b"1" else b"2"
    ratings.write_bytes(b"::".join(fields) + b"\n" + rest)
    changed = ingest_snapshot(str(changed_src), root, downloads=dl, skip_checksum=True)
    assert changed.manifest["snapshot_id"] != original.manifest["snapshot_id"]
    assert not changed.skipped and original.path.is_dir()
    assert preprocess(changed, root).path != preprocess(original, root).path
