"""MovieLens release layouts: find a release in a folder and parse it into the canonical Arrow tables.

Layouts (detected from the files, possibly one sub-folder down, as inside the official zips):
  ml-1m    ratings.dat, movies.dat, users.dat      `::`-separated; movies.dat is latin-1
  ml-10m   ratings.dat, movies.dat (no users)      `::`-separated; half-star ratings
  ml-100k  u.data (tabs), u.item, u.genre, u.user  `|`-separated, latin-1; genres as 19 flags
  csv      ratings.csv, movies.csv                 ml-latest(-small), ml-25m, ml-32m: UTF-8, quoted titles

Ratings (up to tens of millions of rows) are streamed through pyarrow's CSV reader: one read of the
file, a block at a time, so memory holds a block and whatever the caller keeps (ingest writes each
block to Parquet). The `::` files are read with `:` as the delimiter (pyarrow takes one-byte
delimiters only), which yields an empty column between each pair of fields; those columns must be
empty, so a lone `:` is caught like any other malformed line. Only when the reader rejects a file is
it scanned line by line, to name the first bad row and the rule it breaks. Movie and user files are a
few thousand lines and are split in Python. Semantic checks (duplicates, ranges, referential
integrity, title lengths) are the raw validation gate's job, not the parser's.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsys_tasks.errors import InputError

MOVIES_SCHEMA = pa.schema([("movie_id", pa.int64()), ("title", pa.string()), ("year", pa.int32()),
                           ("genres", pa.string())])
RATINGS_SCHEMA = pa.schema([("user_id", pa.int64()), ("movie_id", pa.int64()), ("rating", pa.float32()),
                            ("timestamp", pa.int64())])
USERS_SCHEMA = pa.schema([("user_id", pa.int64()), ("gender", pa.string()), ("age", pa.int32()),
                          ("occupation", pa.string()), ("zip", pa.string())])

# Marker files of each layout, most specific first (ml-1m and ml-10m differ only by users.dat).
LAYOUTS: dict[str, tuple[str, ...]] = {
    "ml-1m": ("ratings.dat", "movies.dat", "users.dat"),
    "ml-10m": ("ratings.dat", "movies.dat"),
    "ml-100k": ("u.data", "u.item", "u.genre", "u.user"),
    "csv": ("ratings.csv", "movies.csv"),
}
# The catalog's column sizes (characters): validate_raw rejects longer values, the SQL catalog declares them.
MAX_TITLE_CHARS = 512
MAX_GENRES_CHARS = 255
NO_GENRES = {"(no genres listed)", "unknown"}  # csv's and ml-100k's spelling of "no genre"
_YEAR = re.compile(r"\((\d{4})(?:[-\u2013](?:\d{4})?)?\)\s*$")
_RATING_COLUMNS = ("user_id", "movie_id", "rating", "timestamp")
_CSV_RATING_COLUMNS = ("userId", "movieId", "rating", "timestamp")
READ_BLOCK_BYTES = 4 << 20  # the CSV reader's block (~150k ratings); it reads a few blocks ahead


@dataclass(frozen=True)
class Release:
    kind: str
    folder: Path
    files: tuple[str, ...]

    def path(self, name: str) -> Path:
        return self.folder / name


@dataclass(frozen=True)
class Tables:
    movies: pa.Table
    ratings: pa.Table
    users: pa.Table | None


def expected_layouts() -> str:
    return "; ".join(f"{kind}: {' + '.join(files)}" for kind, files in LAYOUTS.items())


def find_release(folder: Path) -> Release:
    """The release in `folder`, else in exactly one of its sub-folders (as inside the official zips)."""
    here = _release_in(folder)
    if here:
        return here
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    found = [r for r in map(_release_in, subfolders) if r]
    if len(found) > 1:
        raise InputError(f"{len(found)} releases found: {', '.join(r.folder.name for r in found)}", file=folder,
                         rule="one MovieLens release per snapshot")
    if not found:
        raise InputError(f"no MovieLens release found; expected {expected_layouts()}", file=folder,
                         rule="recognised MovieLens layout")
    return found[0]


def _release_in(folder: Path) -> Release | None:
    for kind, files in LAYOUTS.items():  # most specific first
        if all((folder / f).is_file() for f in files):
            return Release(kind, folder, files)
    return None


def read_release(release: Release) -> Tables:
    """Every table of the release in memory (small releases, tests, benchmarks; ingest streams)."""
    ratings = pa.concat_tables(iter_ratings(release))
    return Tables(read_movies(release), ratings, read_users(release))


def read_movies(release: Release) -> pa.Table:
    if release.kind in ("ml-1m", "ml-10m"):
        movies = _movies_dat(release.path("movies.dat"))
    elif release.kind == "ml-100k":
        movies = _u_item(release.path("u.item"), _u_genre(release.path("u.genre")))
    else:
        movies = _movies_csv(release.path("movies.csv"))
    return movies.sort_by("movie_id")


def read_users(release: Release) -> pa.Table | None:
    if release.kind == "ml-1m":
        return _users(release.path("users.dat"), "::", ML1M_USER_FIELDS).sort_by("user_id")
    if release.kind == "ml-100k":
        return _users(release.path("u.user"), "|", ML100K_USER_FIELDS).sort_by("user_id")
    return None


def iter_ratings(release: Release) -> Iterator[pa.Table]:
    """The release's ratings in file order, a block at a time (RATINGS_SCHEMA)."""
    if release.kind in ("ml-1m", "ml-10m"):
        return read_ratings(release.path("ratings.dat"), sep="::")
    if release.kind == "ml-100k":
        return read_ratings(release.path("u.data"), sep="\t")
    return read_ratings(release.path("ratings.csv"), sep=",", header=_CSV_RATING_COLUMNS)


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file read a row group at a time: pq.read_table's parallel reads hold ~40% more at peak."""
    with pq.ParquetFile(path) as file:
        if not file.num_row_groups:
            return file.schema_arrow.empty_table().select(columns or file.schema_arrow.names)
        return pa.concat_tables([file.read_row_group(i, columns=columns) for i in range(file.num_row_groups)])


def parse_year(title: str) -> int | None:
    match = _YEAR.search(title)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------- ratings: fast path + diagnosis

def read_ratings(path: Path, *, sep: str, header: tuple[str, ...] | None = None) -> Iterator[pa.Table]:
    """user_id, movie_id, rating, timestamp in file order, one table per block read; `header`: the csv
    column names to read. A bad row raises InputError naming it (maybe after earlier blocks were yielded)."""
    if header:
        names = _csv_header(path)
        missing = [c for c in header if c not in names]
        if missing:
            raise InputError(f"header lacks column(s) {', '.join(missing)}: found {','.join(names)}",
                             file=path, row=1, rule=f"columns {','.join(header)}")
        columns = [c if c not in header else _RATING_COLUMNS[header.index(c)] for c in names]
    else:
        columns = list(_RATING_COLUMNS)
    # `::` read as `:`: an empty column between each pair of fields (checked empty below)
    read_as = [f"_gap{i}" if i % 2 else columns[i // 2] for i in range(2 * len(columns) - 1)] if sep == "::" \
        else columns
    gaps = [c for c in read_as if c.startswith("_gap")]
    types = {**dict(zip(_RATING_COLUMNS, RATINGS_SCHEMA.types)), **{g: pa.string() for g in gaps}}
    rows = 0
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=read_as, skip_rows=1 if header else 0,
                                           block_size=READ_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=":" if sep == "::" else sep, quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=[*_RATING_COLUMNS, *gaps],
                                                 null_values=[], strings_can_be_null=False))
        for batch in reader:
            if any(pc.max(pc.binary_length(batch.column(g))).as_py() for g in gaps):
                raise pa.ArrowInvalid("a single ':' inside a '::'-separated line")
            rows += batch.num_rows
            yield pa.Table.from_batches([batch.select(list(_RATING_COLUMNS))]).cast(RATINGS_SCHEMA)
    except pa.ArrowInvalid as exc:
        _diagnose_numeric(path, sep, columns, header is not None)
        raise InputError(f"unreadable ratings: {exc}", file=path, rule="numeric ratings file") from None
    if rows == 0:
        raise InputError("the ratings file holds no ratings", file=path, rule="at least one rating")


def _csv_header(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        first = fh.readline().rstrip(b"\r\n")
    if not first.strip():
        raise InputError("the file is empty or starts with a blank line", file=path, row=1,
                         rule="header line first")
    return next(csv.reader([first.decode("utf-8", errors="replace")]))


def _diagnose_numeric(path: Path, sep: str, columns: list[str], header: bool) -> None:
    """Scan the file to name the first row the fast parser rejected (only runs on bad files)."""
    wanted = {i: c for i, c in enumerate(columns) if c in _RATING_COLUMNS}
    rows = 0
    for row, line in _lines(path, "utf-8", skip=1 if header else 0):
        rows += 1
        fields = line.split(sep)
        if len(fields) != len(columns):
            hint = " (wrong separator?)" if len(fields) == 1 else ""
            raise InputError(f"{len(fields)} field(s) where {len(columns)} are expected{hint}: {line[:80]!r}",
                             file=path, row=row, rule=f"{len(columns)} fields separated by {sep!r}")
        for i, name in wanted.items():
            kind = float if name == "rating" else int
            try:
                kind(fields[i])
            except ValueError:
                raise InputError(f"{name} {fields[i]!r} is not a number", file=path, row=row,
                                 rule=f"{name} is {'numeric' if kind is float else 'an integer'}") from None
    if rows == 0:
        raise InputError("the ratings file holds no ratings", file=path, rule="at least one rating")


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        row = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"undecodable bytes {data[exc.start:exc.end]!r} ({exc.reason})", file=path, row=row,
                         rule=f"{encoding} text") from None


def _lines(path: Path, encoding: str, *, skip: int = 0) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each non-blank line, streamed; undecodable bytes name their line."""
    with open(path, "rb") as fh:
        for row, raw in enumerate(fh, 1):
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise InputError(f"undecodable bytes {raw[exc.start:exc.end]!r} ({exc.reason})", file=path,
                                 row=row, rule=f"{encoding} text") from None
            if row > skip and line.strip():
                yield row, line


def _int(value: str, path: Path, row: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{column} {value!r} is not an integer", file=path, row=row,
                         rule=f"{column} is an integer") from None


def _split(line: str, sep: str, n: int, path: Path, row: int) -> list[str]:
    fields = line.split(sep)
    if len(fields) != n:
        hint = " (wrong separator?)" if len(fields) == 1 else ""
        raise InputError(f"{len(fields)} field(s) where {n} are expected{hint}: {line[:80]!r}", file=path,
                         row=row, rule=f"{n} fields separated by {sep!r}")
    return fields


# ---------------------------------------------------------------- movies and users (small files)

def _movies_table(rows: list[tuple[int, str, str]]) -> pa.Table:
    ids, titles, genres = zip(*rows) if rows else ((), (), ())
    return pa.table({"movie_id": list(ids), "title": list(titles), "year": [parse_year(t) for t in titles],
                     "genres": list(genres)}, schema=MOVIES_SCHEMA)


def _genres(text: str) -> str:
    return "|".join(g for g in text.split("|") if g and g not in NO_GENRES)


def _dat_encoding(path: Path) -> str:
    """ml-1m's movies.dat is latin-1; ml-10m's is UTF-8. latin-1 decodes any bytes, so try UTF-8 first."""
    try:
        path.read_bytes().decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        return "latin-1"


def _movies_dat(path: Path) -> pa.Table:
    rows = []
    for row, line in _lines(path, _dat_encoding(path)):
        movie_id, title, genres = _split(line, "::", 3, path, row)
        rows.append((_int(movie_id, path, row, "movie_id"), title, _genres(genres)))
    return _movies_table(rows)


ML1M_USER_FIELDS = ("user_id", "gender", "age", "occupation", "zip")
ML100K_USER_FIELDS = ("user_id", "age", "gender", "occupation", "zip")


def _users(path: Path, sep: str, fields: tuple[str, ...]) -> pa.Table:
    """users.dat (`::`, user/gender/age/...) and u.user (`|`, user/age/gender/...): same fields, two orders."""
    rows = []
    for row, line in _lines(path, "latin-1"):
        f = dict(zip(fields, _split(line, sep, 5, path, row)))
        rows.append((_int(f["user_id"], path, row, "user_id"), f["gender"], _int(f["age"], path, row, "age"),
                     f["occupation"], f["zip"]))
    return _users_table(rows)


def _users_table(rows: list[tuple[int, str, int, str, str]]) -> pa.Table:
    columns = list(zip(*rows)) if rows else [()] * 5
    return pa.table(dict(zip(USERS_SCHEMA.names, map(list, columns))), schema=USERS_SCHEMA)


def _u_genre(path: Path) -> list[str]:
    """Genre names by flag position (u.genre: `name|index` per line)."""
    by_index = {}
    for row, line in _lines(path, "latin-1"):
        name, index = _split(line, "|", 2, path, row)
        by_index[_int(index, path, row, "genre index")] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise InputError(f"genre indices {sorted(by_index)} are not 0..{len(by_index) - 1}", file=path,
                         rule="genre indices 0..n-1")
    return [by_index[i] for i in range(len(by_index))]


def _u_item(path: Path, genre_names: list[str]) -> pa.Table:
    rows = []
    for row, line in _lines(path, "latin-1"):
        fields = _split(line, "|", 5 + len(genre_names), path, row)
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise InputError(f"genre flags {'|'.join(flags)} are not 0/1", file=path, row=row, rule="genre flags 0 or 1")
        genres = "|".join(name for name, flag in zip(genre_names, flags) if flag == "1")
        rows.append((_int(fields[0], path, row, "movie_id"), fields[1], _genres(genres)))
    return _movies_table(rows)


def _movies_csv(path: Path) -> pa.Table:
    header = ("movieId", "title", "genres")
    rows = []
    reader = csv.reader(line.rstrip("\r") for line in _decode(path, "utf-8").split("\n"))
    names = next(reader, None)
    if names is None or [n for n in header if n not in names]:
        raise InputError(f"header {names} lacks one of {', '.join(header)}", file=path, row=1,
                         rule=f"columns {','.join(header)}")
    index = [names.index(n) for n in header]
    for fields in reader:
        row = reader.line_num  # physical line (the header is line 1)
        if not fields:
            continue
        if len(fields) != len(names):
            raise InputError(f"{len(fields)} field(s) where {len(names)} are expected", file=path, row=row,
                             rule=f"{len(names)} comma-separated fields (titles quoted)")
        movie_id, title, genres = (fields[i] for i in index)
        rows.append((_int(movie_id, path, row, "movieId"), title, _genres(genres)))
    return _movies_table(rows)
