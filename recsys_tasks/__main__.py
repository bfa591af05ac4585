"""The `recsys` command line: one sub-command per step, `run` for the pipeline, and the serving tools.

Exit codes: 0 success, 2 bad input (a failed gate, a bad file, a bad setting), 1 anything else.
With --json the last line of standard output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsys_tasks.config import DEVICES, SAMPLERS, ConfigError, Settings, load_settings
from recsys_tasks.errors import InputError
from recsys_tasks.pipeline import NAMES as STEPS


def _settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", type=Path, help="artifact root, Milvus Lite file, SQLite file (RECSYS_HOME)")
    p.add_argument("--milvus-uri", help="Milvus Lite path or http://host:port (RECSYS_MILVUS_URI)")
    p.add_argument("--db-url", help="SQLAlchemy URL of the catalog (RECSYS_DB_URL)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="show the libraries' log lines (quiet by default)")


def _quiet(verbose: bool) -> None:
    """The serving commands print their answer only; -v brings back INFO logs (ours, pymilvus', uvicorn's)."""
    import logging

    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)  # (importing the steps set INFO)
    if not verbose:
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # its RPC errors come back as our one line


def _ids(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise InputError(f"{flag} must be comma-separated integer movie ids: {exc}", rule="integer ids") from None


def _recommend(args: argparse.Namespace) -> dict[str, Any]:
    from recsys_tasks.serving.recommend import (
        Filters,
        recommend_for_history,
        recommend_for_user,
        recommend_similar,
    )

    settings = _settings_from(args)
    filters = Filters(tuple(args.genre), args.year_min, args.year_max, frozenset(_ids(args.exclude, "--exclude")))
    if args.movie_id is not None:
        return recommend_similar(settings, args.movie_id, args.k, filters)
    if args.user_id is not None:
        return recommend_for_user(settings, args.user_id, args.k, filters)
    return recommend_for_history(settings, _ids(args.history, "--history"), args.k, filters)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _serve(args: argparse.Namespace) -> None:
    import os

    import uvicorn

    settings = _settings_from(args)
    if args.host not in LOOPBACK and not settings.api_key:
        raise ConfigError(f"serve: binding to {args.host} needs an API key (--api-key or RECSYS_API_KEY)")
    level = "info" if args.verbose else "warning"
    if settings.serve_workers == 1:
        from recsys_tasks.serving.api import create_app

        uvicorn.run(create_app(settings, api_key=settings.api_key or None), host=args.host, port=args.port,
                    log_level=level)
        return
    # each worker process builds its app from the environment: hand it the settings given as flags
    os.environ.update({"RECSYS_HOME": str(settings.home.resolve()), "RECSYS_DB_URL": settings.resolved_db_url,
                       "RECSYS_API_KEY": settings.api_key, "RECSYS_MILVUS_URI": settings.milvus_uri})
    uvicorn.run("recsys_tasks.serving.api:serve_app", factory=True, workers=settings.serve_workers, host=args.host,
                port=args.port, log_level=level)


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--snapshot", help="URL, .zip or folder of a MovieLens release (RECSYS_SNAPSHOT)")
    src.add_argument("--synthetic", type=int, metavar="N_USERS",
                     help="generate a seeded synthetic ml-1m-format snapshot with N_USERS users")
    p.add_argument("--skip-checksum", action="store_true", default=None,
                   help="accept a local copy without the official md5 (only for copies you trust)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--negatives", type=int, help="movies drawn per training step (0: a full softmax)")
    p.add_argument("--lr", type=float)
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--seed", type=int)
    p.add_argument("--run-date", help="the run's date, YYYY-MM-DD (default today, UTC): orders models by recency")
    p.add_argument("--force", action="store_true", default=None, help="redo steps even when outputs exist")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="every step in order (skipping those already done)")
    _settings_args(run)
    _pipeline_args(run)
    run.add_argument("--until", choices=STEPS, default="promote", help="last step to run")

    for step in STEPS:
        p = sub.add_parser(step, help=f"run the pipeline up to and including {step}")
        _settings_args(p)
        _pipeline_args(p)

    rec = sub.add_parser("recommend", help="recommendations from the live model")
    _settings_args(rec)
    _verbose_arg(rec)
    what = rec.add_mutually_exclusive_group(required=True)
    what.add_argument("--movie-id", type=int, help="movies similar to this one")
    what.add_argument("--history", help="comma-separated movie ids, oldest first")
    what.add_argument("--user-id", type=int, help="a user of the live snapshot (and their recorded ratings)")
    rec.add_argument("-k", type=int, default=10)
    rec.add_argument("--genre", action="append", default=[], help="only movies of this genre (repeatable: all of them)")
    rec.add_argument("--year-min", type=int)
    rec.add_argument("--year-max", type=int)
    rec.add_argument("--exclude", default="", help="comma-separated movie ids to leave out")

    serve = sub.add_parser("serve", help="the recommendations API (FastAPI + uvicorn)")
    _settings_args(serve)
    _verbose_arg(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", dest="serve_workers", type=int,
                       help="worker processes (RECSYS_SERVE_WORKERS, default 1)")
    serve.add_argument("--api-key", help="required in X-API-Key by every route but /health (RECSYS_API_KEY); "
                                         "needed when binding beyond localhost")

    status = sub.add_parser("status", help="live model version, its metrics and snapshot, collections kept")
    _settings_args(status)
    _verbose_arg(status)

    rollback = sub.add_parser("rollback", help="serve a previous model version again")
    _settings_args(rollback)
    rollback.add_argument("--to", help="version to serve (default: the one before the live one)")
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    keys = ("home", "milvus_uri", "db_url", "snapshot", "skip_checksum", "epochs", "embed_dim", "batch_size",
            "negatives", "lr", "device", "sampler", "seed", "force", "run_date", "api_key", "serve_workers")
    settings = load_settings(**{k: getattr(args, k, None) for k in keys})
    if getattr(args, "synthetic", None):
        from recsys_tasks.data.synthetic import write_snapshot
        from recsys_tasks.locks import FileLocks

        folder = settings.home / "synthetic" / f"ml-1m-{args.synthetic}-users-seed{settings.seed}"
        with FileLocks(settings.home / ".locks").hold(f"synthetic:{folder.name}"):  # two runs at once write it once
            if not folder.is_dir():
                write_snapshot(folder, n_users=args.synthetic, fmt="ml-1m", seed=settings.seed)
        settings = settings.replace(snapshot=str(folder), skip_checksum=True)
    return settings


def _run(args: argparse.Namespace, until: str) -> dict[str, Any]:
    from recsys_tasks import pipeline

    settings = _settings_from(args)
    results = pipeline.run(settings, until=until)
    out: dict[str, Any] = {"steps": {name: r.summary() for name, r in results.items()}}
    for fact, step in (("snapshot_id", "ingest"), ("model_version", "train"), ("metrics", "evaluate")):
        if step in results:
            out[fact] = results[step].manifest[fact]
    if "promote" in results:
        from recsys_tasks.release.promotion import outcome

        out["promotion"] = outcome(settings, results["promote"])
    return out


def _print_human(command: str, result: dict[str, Any]) -> None:
    if "steps" in result:
        for name, step in result["steps"].items():
            state = "skipped (already done)" if step["skipped"] else f"done in {step['duration_s']}s"
            print(f"{name:<20} {state:<28} {step['path']}")
        for fact in ("snapshot_id", "model_version"):
            if fact in result:
                print(f"{fact}: {result[fact]}")
        if "promotion" in result:
            p = result["promotion"]
            print(f"live: {p['live']}" + ("" if p["moved"] else f" (unchanged: {p['held_back']})"))
        if "metrics" in result:
            from recsys_tasks.model.metrics import METRIC_KEYS

            print(f"{'split':<6}{'method':<18}" + "".join(f"{k:>11}" for k in METRIC_KEYS))
            for split, methods in result["metrics"].items():  # val chooses, test is reported
                for method, m in methods.items():
                    print(f"{split:<6}{method:<18}" + "".join(f"{m[k]:>11.4f}" for k in METRIC_KEYS))
    elif "items" in result:
        print(f"model {result.get('model_version')}" + (f" ({result['fallback']})" if result.get("fallback") else ""))
        for i, item in enumerate(result["items"], 1):
            because = f"  because you watched {item['because']['title']}" if item.get("because") else ""
            print(f"{i:>3}. {item['title']}  [{item.get('genres', '')}]"  # MovieLens titles carry the year
                  f"  score {item['score']:.3f}  id {item['movie_id']}{because}")
    else:
        print(json.dumps(result, indent=2, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command
    if command in ("recommend", "serve", "status"):
        _quiet(args.verbose)
    try:
        if command == "run":
            result = _run(args, args.until)
        elif command in STEPS:
            result = _run(args, command)
        elif command == "recommend":
            result = _recommend(args)
        elif command == "serve":
            _serve(args)
            return 0
        elif command == "status":
            from recsys_tasks.release.promotion import status

            result = status(_settings_from(args))
        else:
            from recsys_tasks.release.promotion import rollback

            result = rollback(_settings_from(args), args.to)
    except (InputError, ConfigError) as exc:
        return _fail(args, 2, exc)
    except Exception as exc:  # noqa: BLE001 - the CLI's contract: any other failure is exit 1
        if not _nothing_live(exc) or getattr(args, "verbose", False):  # nothing live: one line
            import traceback

            traceback.print_exc()
        return _fail(args, 1, exc)
    if args.json:
        print(json.dumps({"ok": True, "command": command, **result}, default=str))
    else:
        _print_human(command, result)
    return 0


def _nothing_live(exc: Exception) -> bool:
    recommend = sys.modules.get("recsys_tasks.serving.recommend")  # imported by whoever raised it
    return recommend is not None and isinstance(exc, recommend.NoLiveModel)


def _fail(args: argparse.Namespace, code: int, exc: Exception) -> int:
    kind = type(exc).__name__
    print(f"recsys {args.command}: {kind}: {exc}", file=sys.stderr)
    report = getattr(exc, "report", None)
    if report:
        print(f"report: {report}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "command": args.command, "error": kind, "message": str(exc),
                          "report": str(report) if report else None}))
    return code


if __name__ == "__main__":
    sys.exit(main())
