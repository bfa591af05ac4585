"""Rule results and the gate report: a row per rule (file, rule, failing count, samples), as JSON and HTML."""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from recsys_tasks.artifacts import write_json

REPORT_JSON, REPORT_HTML = "report.json", "report.html"
SAMPLES = 5
Status = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class RuleResult:
    """One rule on one file. `samples` are offending rows; "row" in a sample is the file's row index + 1."""

    file: str
    rule: str
    status: Status
    failing: int
    total: int | None
    check: str  # the GX expectation type, or "custom"
    samples: list[dict[str, Any]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def plain(value: Any) -> Any:
    """A JSON-safe Python value: numpy scalars and arrays unwrapped, NaN and pandas NA as None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray, pd.api.extensions.ExtensionArray)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def sample_rows(frame: pd.DataFrame, labels: list[Any], *, row_numbers: bool = True,
                limit: int = SAMPLES) -> list[dict[str, Any]]:
    """Up to `limit` rows of `frame` by index label; with `row_numbers`, "row" = label + 1 (a RangeIndex)."""
    picked = list(dict.fromkeys(labels))[:limit]  # GX may list a label twice (exploded list columns)
    out = []
    for label in picked:
        values = {str(c): plain(frame.at[label, c]) for c in frame.columns}  # .at keeps each column's type
        out.append({"row": int(label) + 1, **values} if row_numbers else values)
    return out


def write_report(folder: Path, gate: str, results: list[RuleResult], *, counts: dict[str, Any],
                 stats: dict[str, Any], sources: list[Path]) -> Path:
    """report.json (the machine-readable record) and report.html (the same, for a person) in `folder`."""
    failed = [r for r in results if r.failed]
    body = {"gate": gate, "passed": not failed, "rules": len(results), "failed_rules": len(failed),
            "sources": [str(p) for p in sources], "counts": plain(counts), "stats": plain(stats),
            "results": [plain(asdict(r)) for r in results]}
    write_json(folder / REPORT_JSON, body)
    (folder / REPORT_HTML).write_text(_html(body))
    return folder / REPORT_JSON


def _html(body: dict[str, Any]) -> str:
    # GX's Data Docs need a file-backed context and site builder; one pandas table says the same here.
    table = pd.DataFrame([{
        "status": r["status"], "file": r["file"], "rule": r["rule"], "failing": r["failing"],
        "total": r["total"], "check": r["check"],
        "detail": json.dumps(r["detail"], sort_keys=True), "samples": json.dumps(r["samples"]),
    } for r in body["results"]])
    verdict = "PASSED" if body["passed"] else f"FAILED ({body['failed_rules']} of {body['rules']} rules)"
    facts = html.escape(json.dumps({k: body[k] for k in ("sources", "counts", "stats")}, indent=2,
                                   sort_keys=True))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(body['gate'])}</title>"
            "<style>body{font-family:sans-serif}td,th{padding:4px;border:1px solid #ccc;vertical-align:top}"
            "table{border-collapse:collapse}</style></head><body>"
            f"<h1>{html.escape(body['gate'])}: {verdict}</h1><pre>{facts}</pre>"
            f"{table.to_html(index=False, escape=True, border=0)}</body></html>\n")


def _brief(sample: dict[str, Any], width: int = 60) -> dict[str, Any]:
    """A sample row for a one-line message: long strings cut, with their length (the report keeps them)."""
    return {k: f"{v[:width]}... ({len(v)} chars)" if isinstance(v, str) and len(v) > width else v
            for k, v in sample.items()}


def failure_message(gate: str, results: list[RuleResult], report: Path, *, rules: int = 3,
                    rows: int = 3) -> str:
    """One paragraph naming each failing rule's file, rule, failing count and a few sample rows."""
    failed = [r for r in results if r.failed]
    parts = []
    for r in failed[:rules]:
        of = f" of {r.total}" if r.total is not None else ""
        samples = "; ".join(json.dumps(_brief(s), ensure_ascii=False) for s in r.samples[:rows])
        why = f" ({r.detail['message']})" if "message" in r.detail else ""
        parts.append(f"{r.file}: rule {r.rule} failed for {r.failing}{of}{why}"
                     + (f", e.g. {samples}" if samples else ""))
    more = f"; and {len(failed) - rules} more" if len(failed) > rules else ""
    return (f"{gate}: {len(failed)} of {len(results)} rules failed: " + " | ".join(parts) + more
            + f". Report: {report}")
