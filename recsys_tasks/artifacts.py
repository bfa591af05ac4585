"""Step folders, content fingerprints, atomic writes and manifests: the idempotency contract.

Every step writes into `<home>/artifacts/<step>/<key>/`, where `key` is a fingerprint of the step's
inputs (their content hashes), its parameters and the code version. The folder is built under a
temporary name and renamed into place only when complete, with `manifest.json` inside. A step whose
folder already holds a manifest for the same key is skipped; a forced re-run builds a fresh folder
and swaps it in. A step that fails on bad input keeps its partial folder (reports included) as
`<key>.failed` beside it and leaves any earlier good folder untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from recsys_tasks import __version__
from recsys_tasks.errors import InputError
from recsys_tasks.logs import get_logger

log = get_logger(__name__)
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON form of `obj` (sorted keys; paths and sets made stable)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dir_checksums(folder: Path) -> dict[str, str]:
    """{relative path: sha256} for every file under `folder` except the manifest, sorted."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            out[rel] = sha256_file(path)
    return out


def tree_fingerprint(folder: Path) -> str:
    """One hash for a folder's content: names and bytes, not timestamps."""
    return fingerprint(dir_checksums(folder))


@lru_cache(maxsize=1)
def code_version() -> str:
    """The library's version plus a hash of its source, so a code change re-runs the steps it affects."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:10]}"


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: to a temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class StepResult:
    """Where a step's outputs are and what its manifest says; `skipped` when nothing was redone."""

    step: str
    path: Path
    manifest: dict[str, Any]
    skipped: bool

    def out(self, name: str) -> Path:
        return self.path / name

    @property
    def key(self) -> str:
        return self.manifest["key"]

    def summary(self) -> dict[str, Any]:
        return {"step": self.step, "path": str(self.path), "key": self.key, "skipped": self.skipped,
                "counts": self.manifest.get("counts", {}), "duration_s": self.manifest.get("duration_s")}


def load_result(path: str | Path) -> StepResult:
    """A StepResult from a finished step folder (how the DAG passes results between tasks)."""
    path = Path(path)
    manifest = read_json(path / MANIFEST)
    return StepResult(step=manifest["step"], path=path, manifest=manifest, skipped=True)


def step_key(step: str, inputs: dict[str, Any], params: dict[str, Any]) -> str:
    return fingerprint({"step": step, "inputs": inputs, "params": params, "code": code_version()})[:16]


def run_step(root: Path, step: str, *, inputs: dict[str, Any], params: dict[str, Any],
             build: Callable[[Path], dict[str, Any] | None], force: bool = False,
             key: str | None = None) -> StepResult:
    """Run `build(tmp_folder)` unless a finished folder for the same key exists; return its result.

    `inputs` are fingerprints of what the step reads, `params` the settings that change its output.
    `build` writes its outputs into the folder it is given and returns counts (or other facts) for
    the manifest. `key` overrides the folder name (ingest names its folder by the snapshot id).
    """
    key = key or step_key(step, inputs, params)
    step_dir = Path(root) / step
    final = step_dir / key
    if not force and (final / MANIFEST).is_file():
        manifest = read_json(final / MANIFEST)
        if manifest.get("key") == key and manifest.get("status") == "done":
            log.info("%s: skipped, outputs for key %s already in %s", step, key, final)
            return StepResult(step, final, manifest, skipped=True)
    step_dir.mkdir(parents=True, exist_ok=True)
    tmp = step_dir / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    started = time.time()
    log.info("%s: running (key %s)", step, key)
    try:
        facts = build(tmp) or {}
    except InputError:
        _replace_dir(tmp, step_dir / f"{key}.failed")  # keep the reports for the person reading them
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = {
        "step": step,
        "key": key,
        "status": "done",
        "inputs": inputs,
        "params": params,
        "code_version": code_version(),
        "outputs": dir_checksums(tmp),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "duration_s": round(time.time() - started, 3),
        **facts,
    }
    write_json(tmp / MANIFEST, manifest)
    _replace_dir(tmp, final)
    shutil.rmtree(step_dir / f"{key}.failed", ignore_errors=True)
    log.info("%s: done in %.1fs -> %s", step, manifest["duration_s"], final)
    return StepResult(step, final, manifest, skipped=False)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`; an existing `dst` is first renamed aside so readers never see half of one."""
    old = None
    if dst.exists():
        old = dst.with_name(f".old-{dst.name}-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
