"""Step folders, content fingerprints, atomic writes and manifests: the idempotency contract.

Every step writes into `<home>/artifacts/<step>/<key>/`, where `key` is a fingerprint of the step's
inputs (their content hashes), its parameters and the code version. The folder is built under a
temporary name and renamed into place only when complete, with `manifest.json` inside. A step whose
folder already holds a manifest for the same key is skipped; a forced re-run builds a fresh folder
and swaps it in. A step that fails on bad input keeps its partial folder (reports included) as
`<key>.failed` beside it and leaves any earlier good folder untouched.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from recsys_tasks import locks
from recsys_tasks.errors import GateFailure, InputError
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


# Plumbing that cannot change what a step computes: the settings that do are in each step's params.
_PLUMBING = {"recsys_tasks", "recsys_tasks.config", "recsys_tasks.logs", "recsys_tasks.errors",
             "recsys_tasks.artifacts", "recsys_tasks.locks"}
_PACKAGE_ROOT = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    """The source file of a recsys_tasks module or package, or None (not ours, or not a module)."""
    if name != "recsys_tasks" and not name.startswith("recsys_tasks."):
        return None
    base = _PACKAGE_ROOT.joinpath(*name.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(name: str, path: Path) -> set[str]:
    """recsys_tasks modules `name` imports anywhere in its source (lazy imports inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {m for m in found if _module_file(m)}


def _source_digest(path: Path) -> str:
    """Hash of the code without comments, formatting and docstrings: editing those re-runs nothing."""
    tree = ast.parse(path.read_bytes())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


@cache
def module_fingerprint(module: str) -> str:
    """A hash of `module`'s code and of every recsys_tasks module it imports, transitively.

    This is the code part of a step's key: derived from the imports, so editing serving/ or a test
    leaves the train step's key alone while editing model/ or graph/ changes it. Modules outside the
    package (a test's fixtures, say) contribute the recsys_tasks modules they import.
    """
    seen: dict[str, str] = {}
    todo = [module]
    if _module_file(module) is None:
        spec = importlib.util.find_spec(module)
        origin = Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None
        todo = sorted(_imports(module, origin)) if origin else []
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen[name] = _source_digest(path)
        todo.extend(_imports(name, path))
    return fingerprint({m: d for m, d in seen.items() if m not in _PLUMBING})[:16]


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


def step_key(step: str, inputs: dict[str, Any], params: dict[str, Any], *, module: str) -> str:
    """The folder name of a step's outputs: its inputs, its parameters and the code of `module`
    (the module that builds it) and of everything that module imports."""
    return fingerprint({"step": step, "inputs": inputs, "params": params,
                        "code": module_fingerprint(module)})[:16]


FAILURE = "failure.json"  # in `<key>.failed/`: a gate's verdict, which stands until forced


def run_step(root: Path, step: str, *, inputs: dict[str, Any], params: dict[str, Any],
             build: Callable[[Path], dict[str, Any] | None], force: bool = False,
             key: str | None = None, in_sync: Callable[[], bool] | None = None) -> StepResult:
    """Run `build(tmp_folder)` unless a finished folder for the same key exists; return its result.

    `inputs` are fingerprints of what the step reads, `params` the settings that change its output;
    the code part of the key comes from the module `build` is defined in. `build` writes its outputs
    into the folder it is given and returns counts (or other facts) for the manifest. `key` overrides
    the folder name (ingest names its folder by the snapshot id). `in_sync`, for steps that change an
    external store, must also say the store holds what the folder records, else the step runs again.

    One process builds a key at a time (a lock per key): a second one waits, then skips. A gate that
    failed (GateFailure) keeps its verdict in `<key>.failed/`, and re-running it raises the same
    failure until forced or until its inputs change (a new key).
    """
    key = key or step_key(step, inputs, params, module=build.__module__)
    step_dir = Path(root) / step
    final = step_dir / key
    done = _finished(final, key, in_sync, force)
    if done:
        return done
    step_dir.mkdir(parents=True, exist_ok=True)
    with locks.current(root).hold(f"step:{step}:{key}"):
        done = _finished(final, key, in_sync, force)  # another process may have built it while we waited
        if done:
            return done
        failed = step_dir / f"{key}.failed"
        if not force and (failed / FAILURE).is_file():
            verdict = read_json(failed / FAILURE)
            log.info("%s: the failed verdict for key %s stands (%s); force re-runs it", step, key, failed)
            raise GateFailure(verdict["message"], rule=verdict.get("rule"), file=verdict.get("file"),
                              report=verdict.get("report") and Path(verdict["report"]))
        for stale in [*step_dir.glob(f".tmp-{key}-*"), *step_dir.glob(f".old-{key}-*")]:  # a killed builder's
            shutil.rmtree(stale, ignore_errors=True)
        return _build(step_dir, step, key, inputs, params, build)


def _finished(final: Path, key: str, in_sync: Callable[[], bool] | None, force: bool) -> StepResult | None:
    if force or not (final / MANIFEST).is_file():
        return None
    manifest = read_json(final / MANIFEST)
    if manifest.get("key") != key or manifest.get("status") != "done":
        return None
    if in_sync is not None and not in_sync():
        log.info("%s: the store no longer holds what %s records; running again", manifest["step"], final)
        return None
    log.info("%s: skipped, outputs for key %s already in %s", manifest["step"], key, final)
    return StepResult(manifest["step"], final, manifest, skipped=True)


def _build(step_dir: Path, step: str, key: str, inputs: dict[str, Any], params: dict[str, Any],
           build: Callable[[Path], dict[str, Any] | None]) -> StepResult:
    tmp = step_dir / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    started = time.time()
    log.info("%s: running (key %s)", step, key)
    try:
        facts = build(tmp) or {}
    except InputError as exc:
        if isinstance(exc, GateFailure):
            write_json(tmp / FAILURE, {"message": exc.message, "rule": exc.rule,
                                       "file": exc.file and str(exc.file), "report": exc.report and str(exc.report)})
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
        "code": module_fingerprint(build.__module__),
        "outputs": dir_checksums(tmp),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "duration_s": round(time.time() - started, 3),
        **facts,
    }
    write_json(tmp / MANIFEST, manifest)
    _replace_dir(tmp, step_dir / key)
    shutil.rmtree(step_dir / f"{key}.failed", ignore_errors=True)
    log.info("%s: done in %.1fs -> %s", step, manifest["duration_s"], step_dir / key)
    return StepResult(step, step_dir / key, manifest, skipped=False)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`; an existing `dst` is first renamed aside so readers never see half of one."""
    old = None
    if dst.exists():
        old = dst.with_name(f".old-{dst.name}-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
