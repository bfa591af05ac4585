"""The rule runner every gate shares: GX expectations on a DataFrame, plus the few checks GX cannot express.

Both kinds come back as RuleResult rows (file, rule, failing count, sample rows), so a report reads the
same whichever produced a row. GX Core is called directly with one in-memory (ephemeral) context per
process, made on first use: importing GX costs 2-4 s, the context ~20 ms, each suite run ~60 ms plus
the data-dependent work (~0.25 CPU-s for six rules on a million rows).

Files that grow with the ratings are validated in chunks (`run_expectations_chunked`): GX Core 1.x
validates a pandas DataFrame as one batch (its DataFrame asset has only a whole-frame batch
definition, its Parquet assets read whole files, and it has no DuckDB or other out-of-core engine
without Spark; its SQL data sources would need the ratings copied into a database first), so each
chunk of CHUNK_ROWS rows is its own batch, indexed by the file's row numbers, and the per-rule results
are summed. That is exact for row-wise expectations (not null, in set, between, in a reference): a
row fails or passes on its own. What spans chunks (uniqueness across the file, equal pair sets, a
user's rows in order) GX cannot do on chunks; those rules are in `validation/pairs.py`, with numpy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_tasks.validation.report import SAMPLES, RuleResult, plain, sample_rows

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.expectations import Expectation

logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO lines are import chatter
_LONG = 10  # kwargs lists longer than this are summarised in reports
CHUNK_ROWS = 1 << 20  # rows per GX batch when a file is validated in chunks (~25 MB of ratings)


@cache
def _batch_definition() -> BatchDefinition:
    """One ephemeral context per process: analytics off (no network), no progress bars in task logs."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    context = gx.get_context(project_config=config, mode="ephemeral")
    asset = context.data_sources.add_pandas("recsys").add_dataframe_asset("frame")
    return asset.add_batch_definition_whole_dataframe("whole")


@dataclass(frozen=True)
class InReference:
    """Every non-null value of `column` occurs in `reference` (another table's keys: referential integrity).

    Run as GX's expect_column_values_to_be_in_set on a precomputed membership flag rather than with the
    keys as the value set: GX re-serialises an expectation's kwargs hundreds of times per validation, so
    a literal set of 70k user ids costs 5-8 s per rule on a million rows, the flag a fraction of a second.
    """

    column: str
    reference: Any  # array-like of keys


def run_expectations(frame: pd.DataFrame, file: str, rules: dict[str, Expectation | InReference], *,
                     rows: pd.DataFrame | None = None, row_numbers: bool = True) -> list[RuleResult]:
    """Validate `frame` against named expectations in one GX suite run; one RuleResult per rule.

    Sample rows are looked up by index label in `rows` (default `frame`), so a derived frame (an
    exploded list column, say) that keeps the original index reports the file's own rows.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    rows = frame if rows is None else rows
    flags: dict[str, pd.Series] = {}
    expectations = []
    for name, rule in rules.items():
        if isinstance(rule, InReference):
            values = frame[rule.column]
            flags[f"{name}?"] = values.isin(pd.unique(np.asarray(rule.reference))) | values.isna()
            rule = gxe.ExpectColumnValuesToBeInSet(column=f"{name}?", value_set=[True], meta={
                "column": rule.column, "reference_keys": len(rule.reference)})
        rule.meta = {**(rule.meta or {}), "rule": name}
        expectations.append(rule)
    suite = gx.ExpectationSuite(name=file, expectations=expectations)
    checked = frame.assign(**flags) if flags else frame
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": checked})
    validation = batch.validate(suite, result_format={"result_format": "SUMMARY",
                                                      "partial_unexpected_count": SAMPLES})
    by_rule = {res.expectation_config.meta["rule"]: res for res in validation.results}
    return [_to_result(file, name, by_rule[name], rows, row_numbers) for name in rules]


def run_expectations_chunked(chunks: Iterable[pd.DataFrame], file: str,
                             rules: dict[str, Expectation | InReference], *, empty: pd.DataFrame,
                             row_numbers: bool = True) -> list[RuleResult]:
    """Row-wise expectations over a file given in chunks (frames indexed by the file's row index), one
    GX run per chunk, merged into one RuleResult per rule: failing and total counts summed, the first
    SAMPLES samples in file order. `empty` (the file's columns, no rows) stands in for a file without rows.
    """
    rules = {name: InReference(r.column, pd.unique(np.asarray(r.reference))) if isinstance(r, InReference) else r
             for name, r in rules.items()}  # the reference keys made unique once, not per chunk
    merged: dict[str, RuleResult] = {}
    for chunk in chunks:
        for result in run_expectations(chunk, file, rules, row_numbers=row_numbers):
            merged[result.rule] = _merge(merged[result.rule], result) if result.rule in merged else result
    if not merged:
        return run_expectations(empty, file, rules, row_numbers=row_numbers)
    return [merged[name] for name in rules]


def _merge(a: RuleResult, b: RuleResult) -> RuleResult:
    """Two chunks' results of one row-wise rule as one: a chunk whose metric raised keeps the rule failed."""
    message = a.detail.get("message") or b.detail.get("message")
    total = None if a.total is None or b.total is None else a.total + b.total
    return replace(a, status="failed" if a.failed or b.failed else a.status, failing=a.failing + b.failing,
                   total=total, samples=(a.samples + b.samples)[:SAMPLES],
                   detail={**a.detail, **({"message": message} if message else {})})


def parquet_chunks(path: Path, columns: list[str] | None = None, rows: int | None = None) -> Iterator[pd.DataFrame]:
    """The file as DataFrames of at most `rows` (default CHUNK_ROWS) rows, each indexed by its row numbers
    in the file (0-based), so GX's unexpected index labels and `sample_rows` name the file's rows."""
    rows = rows or CHUNK_ROWS
    start = 0
    with pq.ParquetFile(path) as file:
        for batch in file.iter_batches(batch_size=rows, columns=columns):
            frame = batch.to_pandas()
            frame.index = pd.RangeIndex(start, start + len(frame))
            start += len(frame)
            yield frame


def empty_frame(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    schema = pq.read_schema(path)
    return schema.empty_table().select(columns or schema.names).to_pandas()


def count_rule(file: str, rule: str, rows: int, minimum: int) -> RuleResult:
    """At least `minimum` rows, from the file's metadata (GX's row-count expectation sees one chunk)."""
    ok = rows >= minimum
    return RuleResult(file, rule, "passed" if ok else "failed", 0 if ok else 1, None, "custom",
                      detail={"observed": rows, "min_value": minimum})


def _to_result(file: str, rule: str, res: Any, rows: pd.DataFrame, row_numbers: bool) -> RuleResult:
    config = res.expectation_config
    detail: dict[str, Any] = {"kwargs": {k: _short(v) for k, v in config.kwargs.items() if k != "batch_id"},
                              **{k: v for k, v in (config.meta or {}).items() if k != "rule"}}
    error = _exception_message(res.exception_info)
    if error:
        return RuleResult(file, rule, "failed", 1, None, config.type, detail={**detail, "message": error})
    result = res.result or {}
    if "observed_value" in result:
        detail["observed"] = _short(result["observed_value"])
    failing = result.get("unexpected_count")
    if failing is None:  # table-level expectations (row counts) have no per-row count
        failing = 0 if res.success else 1
    samples = sample_rows(rows, result.get("partial_unexpected_index_list") or [], row_numbers=row_numbers)
    return RuleResult(file, rule, "passed" if res.success else "failed", int(failing),
                      result.get("element_count"), config.type, samples, detail)


def _exception_message(info: Any) -> str | None:
    """GX reports a metric that raised either flat or keyed by metric id; either way, the first message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _short(value: Any) -> Any:
    if isinstance(value, (list, tuple, set)) and len(value) > _LONG:
        return f"<{len(value)} values>"
    return plain(value)


def rows_rule(file: str, rule: str, bad: pd.DataFrame, total: int | None, *, row_numbers: bool = True,
              detail: dict[str, Any] | None = None) -> RuleResult:
    """A custom rule whose offending rows are `bad` (index = the file's row index when `row_numbers`)."""
    head = bad.head(SAMPLES)
    samples = [({"row": int(label) + 1} if row_numbers else {})
               | {str(k): plain(v) for k, v in record.items()}
               for label, record in zip(head.index, head.to_dict("records"))]
    return RuleResult(file, rule, "failed" if len(bad) else "passed", len(bad), total, "custom", samples,
                      detail or {})


def equal_rule(file: str, rule: str, observed: Any, expected: Any, *,
               detail: dict[str, Any] | None = None) -> RuleResult:
    """A custom rule that one observed value equals the expected one (counts, sizes, flags).

    Failing count: for two counts, how far apart they are; for anything else, 1.
    """
    ok = observed == expected
    both_int = isinstance(observed, int) and isinstance(expected, int)
    failing = abs(int(observed) - int(expected)) if both_int else int(not ok)
    return RuleResult(file, rule, "passed" if ok else "failed", 0 if ok else failing, None, "custom",
                      detail={"observed": plain(observed), "expected": plain(expected), **(detail or {})})


def skipped_rule(file: str, rule: str, reason: str) -> RuleResult:
    return RuleResult(file, rule, "skipped", 0, None, "custom", detail={"message": reason})


def check_schema(path: Path, spec: dict[str, str]) -> RuleResult:
    """Columns and Arrow types as stored in the parquet file.

    Checked on the file's schema rather than with GX on the DataFrame: converting to pandas loses the
    stored type (a nullable int32 column arrives as float64), and the contract is the stored type.
    `spec` types: an Arrow type name ("int64"), "string", "int", "list<int32>",
    "fixed_size_list<float32>", or alternatives joined by "|".
    """
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:  # missing (FileNotFoundError) or not parquet
        return RuleResult(path.name, "schema", "failed", 1, None, "custom", detail={"message": str(exc)})
    bad = [{"column": column, "expected": want,
            "found": str(schema.field(column).type) if column in schema.names else "missing"}
           for column, want in spec.items()
           if column not in schema.names or not type_matches(want, schema.field(column).type)]
    return RuleResult(path.name, "schema", "failed" if bad else "passed", len(bad), len(spec), "custom", bad,
                      {"columns": list(schema.names)})


def type_matches(want: str, arrow_type: pa.DataType) -> bool:
    return any(_type_is(option, arrow_type) for option in want.split("|"))


def _type_is(want: str, t: pa.DataType) -> bool:
    if want == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    if want == "int":
        return pa.types.is_integer(t)
    if want.startswith("list<"):
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _type_is(want[5:-1], t.value_type)
    if want.startswith("fixed_size_list<"):
        return pa.types.is_fixed_size_list(t) and _type_is(want[16:-1], t.value_type)
    return t == pa.type_for_alias(want)
