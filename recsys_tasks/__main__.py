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
    what = rec.add_mutually_exclusive_group(required=True)
    what.add_argument("--movie-id", type=int, help="movies similar to this one")
    what.add_argument("--history", help="comma-separated movie ids, oldest first")
    rec.add_argument("-k", type=int, default=10)

    serve = sub.add_parser("serve", help="the recommendations API (FastAPI + uvicorn)")
    _settings_args(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    status = sub.add_parser("status", help="live model version, its metrics and snapshot, collections kept")
    _settings_args(status)

    rollback = sub.add_parser("rollback", help="serve a previous model version again")
    _settings_args(rollback)
    rollback.add_argument("--to", help="version to serve (default: the one before the live one)")
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    keys = ("home", "milvus_uri", "db_url", "snapshot", "skip_checksum", "epochs", "embed_dim", "batch_size", "lr",
            "device", "sampler", "seed", "force", "run_date")
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
        print(f"model {result.get('model_version')}")
        for i, item in enumerate(result["items"], 1):
            print(f"{i:>3}. {item['title']}  [{item.get('genres', '')}]"  # MovieLens titles carry the year
                  f"  score {item['score']:.3f}  id {item['movie_id']}")
    else:
        print(json.dumps(result, indent=2, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command
    try:
        if command == "run":
            result = _run(args, args.until)
        elif command in STEPS:
            result = _run(args, command)
        elif command == "recommend":
            from recsys_tasks.serving.recommend import recommend_for_history, recommend_similar

            settings = _settings_from(args)
            if args.movie_id is not None:
                result = recommend_similar(settings, args.movie_id, args.k)
            else:
                try:
                    history = [int(x) for x in args.history.split(",") if x.strip()]
                except ValueError as exc:
                    raise InputError(f"--history must be comma-separated integer movie ids: {exc}",
                                     rule="integer ids") from None
                result = recommend_for_history(settings, history, args.k)
        elif command == "serve":
            import uvicorn

            from recsys_tasks.serving.api import create_app

            uvicorn.run(create_app(_settings_from(args)), host=args.host, port=args.port)
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
        import traceback

        traceback.print_exc()
        return _fail(args, 1, exc)
    if args.json:
        print(json.dumps({"ok": True, "command": command, **result}, default=str))
    else:
        _print_human(command, result)
    return 0


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
