"""The (user, movie) pair rules that span a whole file, which GX cannot check on chunks: no pair twice in
a file, two files holding the same pairs. Exact, with the failing rows named, in bounded memory.

A pair is packed into one int64 key that sorts as the pair does: (a - a_lo) * b_span + (b - b_lo) where
the id ranges allow (every MovieLens release, by far), else the pair of ranks among the distinct ids.
A null id packs just below its column's smallest value, so pairs with a null compare equal to each
other (as pandas compares them), and a row whose ids are both null is left out (as GX's compound
uniqueness leaves it out). Memory: 8 bytes per row per file for the keys, sorted in place (16 while
two key sets are matched); the rows are read a chunk at a time, and read again only when a rule
fails, to name the failing rows.

Equal pair sets are first compared in file order, a chunk at a time: build_graph writes its edges in
the train split's order, so equal files compare equal without keeping a single key. Only when that
fails are the keys sorted to find the pairs on one side only (the outer join's answer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_tasks.validation import runner
from recsys_tasks.validation.report import SAMPLES, RuleResult, plain, sample_rows

Chunk = tuple[pa.Array, pa.Array]
Source = Callable[[], Iterable[Chunk]]  # a re-readable stream of (a, b) id chunks
_BOTH_NULL = -1  # packed keys are >= 0
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Bounds:
    """The smallest and largest non-null value of each of the two columns (None: no non-null value)."""

    a: tuple[int, int] | None
    b: tuple[int, int] | None

    def union(self, other: Bounds) -> Bounds:
        return Bounds(_span(self.a, other.a), _span(self.b, other.b))


def _span(x: tuple[int, int] | None, y: tuple[int, int] | None) -> tuple[int, int] | None:
    if x is None or y is None:
        return x or y
    return min(x[0], y[0]), max(x[1], y[1])


class PairKeys:
    """Packs (a, b) pairs into int64 keys with the pairs' lexicographic order."""

    def __init__(self, bounds: Bounds, distinct: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
        a, b = bounds.a or (0, 0), bounds.b or (0, 0)
        self.lo = (a[0] - 1, b[0] - 1)  # one below the smallest value: the null
        spans = (a[1] - self.lo[0] + 1, b[1] - self.lo[1] + 1)
        self.ranks: tuple[np.ndarray, np.ndarray] | None = None
        if spans[0] * spans[1] > _INT64_MAX or self.lo[0] < -_INT64_MAX or self.lo[1] < -_INT64_MAX:
            self.ranks = distinct()  # ids too far apart to pack by value: pack their ranks
            spans = (len(self.ranks[0]) + 1, len(self.ranks[1]) + 1)
        self.b_span = spans[1]

    def pack(self, a: pa.Array, b: pa.Array) -> np.ndarray:
        a_null, b_null = _nulls(a), _nulls(b)
        ka, kb = self._code(a, 0, a_null), self._code(b, 1, b_null)
        keys = ka * self.b_span + kb
        if a_null is not None and b_null is not None:
            keys[a_null & b_null] = _BOTH_NULL
        return keys

    def unpack(self, keys: np.ndarray) -> tuple[list[Any], list[Any]]:
        return self._value(keys // self.b_span, 0), self._value(keys % self.b_span, 1)

    def _code(self, values: pa.Array, column: int, nulls: np.ndarray | None) -> np.ndarray:
        filled = pc.fill_null(values, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if self.ranks is None:
            code = filled - self.lo[column]
        else:
            code = np.searchsorted(self.ranks[column], filled) + 1
        if nulls is not None:
            code = np.where(nulls, 0, code)
        return code

    def _value(self, code: np.ndarray, column: int) -> list[Any]:
        if self.ranks is None:
            values = (code + self.lo[column]).tolist()
        else:
            values = self.ranks[column][np.maximum(code - 1, 0)].tolist()
        return [None if c == 0 else v for c, v in zip(code.tolist(), values)]


def _nulls(values: pa.Array) -> np.ndarray | None:
    return values.is_null().to_numpy(zero_copy_only=False) if values.null_count else None


def parquet_bounds(paths: Iterable[Path], columns: tuple[str, str]) -> Bounds:
    """Min and max of two integer columns across Parquet files, from their statistics (read if absent)."""
    out = Bounds(None, None)
    for path in paths:
        with pq.ParquetFile(path) as file:
            spans = [_statistics_span(file, c) for c in columns]
            spans = [s if s != "missing" else _span_of(_chunk_bounds(b.column(0))
                                                        for b in file.iter_batches(columns=[c]))
                     for s, c in zip(spans, columns)]
            out = out.union(Bounds(*spans))
    return out


def _statistics_span(file: pq.ParquetFile, column: str) -> tuple[int, int] | None | str:
    index = file.schema_arrow.names.index(column)
    spans = []
    for group in range(file.metadata.num_row_groups):
        stats = file.metadata.row_group(group).column(index).statistics
        if stats is None or (not stats.has_min_max and stats.num_values):
            return "missing"  # values without statistics: read them
        if stats.has_min_max:
            spans.append((stats.min, stats.max))
    return _span_of(spans)


def array_bounds(a: np.ndarray | pa.Array, b: np.ndarray | pa.Array) -> Bounds:
    return Bounds(_chunk_bounds(pa.array(a)), _chunk_bounds(pa.array(b)))


def _chunk_bounds(values: pa.Array) -> tuple[int, int] | None:
    low, high = pc.min_max(values).values()
    return None if low.as_py() is None else (int(low.as_py()), int(high.as_py()))


def _span_of(spans: Iterable[tuple[int, int] | None]) -> tuple[int, int] | None:
    out = None
    for s in spans:
        out = _span(out, None if s is None else (int(s[0]), int(s[1])))
    return out


def parquet_source(path: Path, columns: tuple[str, str]) -> Source:
    def read() -> Iterator[Chunk]:
        with pq.ParquetFile(path) as file:
            for batch in file.iter_batches(batch_size=runner.CHUNK_ROWS, columns=list(columns)):
                yield batch.column(0), batch.column(1)

    return read


def distinct_values(*sources: Source) -> tuple[np.ndarray, np.ndarray]:
    """Every non-null value of each column over the sources, sorted (the rank fallback's vocabulary)."""
    a, b = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for source in sources:
        for x, y in source():
            a = np.union1d(a, pc.unique(x.drop_null()).to_numpy().astype(np.int64))
            b = np.union1d(b, pc.unique(y.drop_null()).to_numpy().astype(np.int64))
    return a, b


def parquet_distinct(path: Path, column: str) -> np.ndarray:
    """The distinct non-null values of one column, read a chunk at a time."""
    out = np.zeros(0, np.int64)
    with pq.ParquetFile(path) as file:
        for batch in file.iter_batches(batch_size=runner.CHUNK_ROWS, columns=[column]):
            out = np.union1d(out, pc.unique(batch.column(0).drop_null()).to_numpy())
    return out


def _packed(source: Source, keys: PairKeys, rows: int) -> np.ndarray:
    out = np.empty(rows, dtype=np.int64)
    at = 0
    for a, b in source():
        if at + len(a) > rows:
            raise ValueError(f"the source holds more than the {rows} rows it declared")
        out[at:at + len(a)] = keys.pack(a, b)
        at += len(a)
    return out[:at]


def duplicate_rows_rule(file: str, rule: str, path: Path, columns: tuple[str, str], rows: int) -> RuleResult:
    """Rows of a Parquet file whose (a, b) pair occurs more than once: failing = every such row (as GX's
    compound-columns uniqueness counts them), samples = the first of them in file order, whole rows."""
    source = parquet_source(path, columns)
    keys = PairKeys(parquet_bounds([path], columns), lambda: distinct_values(source))
    packed = _packed(source, keys, rows)
    packed.sort()
    repeated = packed[1:][packed[1:] == packed[:-1]]
    del packed
    repeated = np.unique(repeated[repeated != _BOTH_NULL])
    failing, samples, start = 0, [], 0
    if len(repeated):  # name the rows: read the file once more
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=runner.CHUNK_ROWS):
                hit = np.isin(keys.pack(batch.column(columns[0]), batch.column(columns[1])), repeated)
                failing += int(hit.sum())
                if hit.any() and len(samples) < SAMPLES:
                    frame = batch.to_pandas()
                    frame.index = pd.RangeIndex(start, start + len(frame))
                    samples += sample_rows(frame, frame.index[hit][:SAMPLES - len(samples)].tolist())
                start += batch.num_rows
    return RuleResult(file, rule, "failed" if failing else "passed", failing, rows, "custom", samples,
                      {"columns": list(columns)})


def same_pairs_rule(file: str, rule: str, got: Source, want: Source, names: tuple[str, str],
                    sides: tuple[str, str], rows: tuple[int, int], bounds: Callable[[], Bounds]) -> RuleResult:
    """The two sources hold the same set of pairs; failing = rows whose pair is on one side only (with
    their multiplicity, as an outer join counts them), samples = the first such pairs in pair order with
    the side they are on. `rows` are the sources' lengths; `bounds` their ids' range (asked only when
    the files differ in order)."""
    total = max(rows)
    if rows[0] == rows[1] and _equal_in_order(got, want):
        return RuleResult(file, rule, "passed", 0, total, "custom")
    keys = PairKeys(bounds(), lambda: distinct_values(got, want))
    a = _packed(got, keys, rows[0])
    a.sort()
    b = _packed(want, keys, rows[1])
    b.sort()
    only = [a[~_isin_sorted(a, b)], b[~_isin_sorted(b, a)]]
    del a, b
    failing = len(only[0]) + len(only[1])
    side = np.concatenate([np.zeros(len(only[0]), np.int8), np.ones(len(only[1]), np.int8)])
    merged = np.concatenate(only)
    first = np.argpartition(merged, SAMPLES)[:SAMPLES] if len(merged) > SAMPLES else np.arange(len(merged))
    first = first[np.argsort(merged[first], kind="stable")]
    x, y = keys.unpack(merged[first])
    samples = [{names[0]: plain(u), names[1]: plain(m), "only_in": sides[int(s)]}
               for u, m, s in zip(x, y, side[first])]
    return RuleResult(file, rule, "failed" if failing else "passed", failing, total, "custom", samples)


def _isin_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    at = np.searchsorted(sorted_keys, values)
    return (at < len(sorted_keys)) & (sorted_keys[np.minimum(at, len(sorted_keys) - 1)] == values)


def _equal_in_order(got: Source, want: Source) -> bool:
    """Row i of one source is row i of the other, for every i (nulls never equal)."""
    rows = runner.CHUNK_ROWS
    for (a1, b1), (a2, b2) in zip(rechunk(got(), rows), rechunk(want(), rows), strict=False):
        if len(a1) != len(a2):
            return False
        for x, y in ((a1, a2), (b1, b2)):
            if x.null_count or y.null_count or not pc.all(pc.equal(x, y)).as_py():
                return False
    return True


def rechunk(chunks: Iterable[Chunk], rows: int) -> Iterator[Chunk]:
    """The same pairs in chunks of exactly `rows` (the last may be shorter), whatever the input's sizes."""
    pending: list[Chunk] = []
    held = 0
    for a, b in chunks:
        pending.append((a, b))
        held += len(a)
        while held >= rows:
            a_all = pa.concat_arrays([pa.array(x) for x, _ in pending])
            b_all = pa.concat_arrays([pa.array(y) for _, y in pending])
            yield a_all.slice(0, rows), b_all.slice(0, rows)
            pending, held = [(a_all.slice(rows), b_all.slice(rows))], held - rows
    if held:
        yield (pa.concat_arrays([pa.array(x) for x, _ in pending]),
               pa.concat_arrays([pa.array(y) for _, y in pending]))


def numpy_source(chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]) -> Source:
    def read() -> Iterator[Chunk]:
        for a, b in chunks():
            yield pa.array(a), pa.array(b)

    return read

