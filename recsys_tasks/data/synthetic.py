"""Seeded synthetic MovieLens snapshots in the real file formats, with taste structure a model can learn.

The catalog is split into taste clusters, each tied to two genres and its own title words. Within a
cluster the movies form a chain (a ring): neighbours share title words and come from nearby years.
Each user has a primary and a secondary cluster and watches a sequence that mostly steps forward
along the chain from the previous movie (so the next movie is predictable from the last one), sometimes
jumps to a popular movie of one of their clusters, and now and then explores the whole catalog.
Popularity follows a Zipf-like law. Same arguments and seed -> byte-identical files.

Scale: the sequences are walked for every user at once, one step at a time (vectorised, int32); repeats
are dropped and timestamps accumulated per block of users, and the rating files are formatted by
pyarrow's string kernels a million lines at a time, so 25 M ratings take about a minute and ~2 GB.
Working in blocks does not change a byte: the random draws happen in the same order as one pass would.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys_tasks.logs import get_logger, progress

log = get_logger(__name__)
FORMATS = ("ml-1m", "ml-10m", "ml-100k", "csv")
GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western"]
OCCUPATIONS_100K = ["administrator", "artist", "doctor", "educator", "engineer", "entertainment",
                    "executive", "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none",
                    "other", "programmer", "retired", "salesman", "scientist", "student", "technician",
                    "writer"]
AGES_1M = [1, 18, 25, 35, 45, 50, 56]
# Taste clusters: two genres and eight title words each ("Café", "Noël" exercise latin-1 / UTF-8).
CLUSTERS = [
    (("Action", "Thriller"), "Dragon Sword Fury Storm Blade Hunter Steel Thunder"),
    (("Adventure", "Fantasy"), "Quest Island Voyage Treasure Jungle Map Compass River"),
    (("Animation", "Children's"), "Toon Bunny Magic Puppy Candy Rainbow Wizard Giggle"),
    (("Comedy", "Romance"), "Laugh Wedding Party Roommate Holiday Café Dinner Noël"),
    (("Crime", "Mystery"), "Murder Witness Shadow Alibi Heist Detective Night Cartel"),
    (("Drama", "Romance"), "Heart Letter Summer Promise Dance Paris Kiss Lovers"),
    (("Sci-Fi", "Adventure"), "Galaxy Robot Planet Alien Star Orbit Android Nebula"),
    (("Horror", "Thriller"), "Ghost Scream Cellar Curse Blood Zombie Haunting Fog"),
]
N_CLUSTERS = len(CLUSTERS)
STEP_FORWARD, JUMP_IN_CLUSTER = 0.65, 0.25  # the rest explores the catalog
SECONDARY_SHARE = 0.25
FIRST_TS, LAST_START_TS = 956_703_932, 1_040_000_000  # ml-1m's time span
USER_BLOCK = 2_000  # users per block when dropping repeats and accumulating timestamps (~1 M steps)
LINES_PER_WRITE = 1_000_000
HALF_STAR_FORMATS = ("ml-10m", "csv")


def write_snapshot(folder: Path, *, n_users: int, fmt: str = "ml-1m", seed: int = 0,
                   n_movies: int | None = None, ratings_per_user: tuple[int, int] = (20, 60)) -> Path:
    """Write a release in `fmt` (one of FORMATS) as `folder` (replacing it); returns `folder`."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt: {fmt!r} is not one of {', '.join(FORMATS)}")
    if n_users < 1 or not 1 <= ratings_per_user[0] <= ratings_per_user[1]:
        raise ValueError("need n_users >= 1 and 1 <= ratings_per_user[0] <= ratings_per_user[1]")
    n_movies = n_movies or max(200, min(4000, n_users))
    if n_movies < 2 * N_CLUSTERS:
        raise ValueError(f"n_movies: need at least {2 * N_CLUSTERS}, got {n_movies}")
    rng = np.random.default_rng(seed)
    catalog = _catalog(rng, n_movies, with_missing_years=fmt == "csv")
    users, movies, ts, rating = _interactions(rng, catalog, n_users, ratings_per_user)
    stars = _stars(rating, half=fmt in HALF_STAR_FORMATS)
    del rating
    # Written beside `folder`, then renamed: an interrupted run never leaves a half snapshot behind.
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = {"ml-1m": _write_ml1m, "ml-10m": _write_ml10m, "ml-100k": _write_ml100k, "csv": _write_csv}[fmt]
    writer(tmp, rng, catalog, n_users, users, catalog["ids"][movies], ts, stars)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log.info("synthetic %s snapshot: %d users, %d movies, %d ratings -> %s", fmt, n_users, n_movies,
             len(users), folder)
    return folder


def _stars(rating: np.ndarray, *, half: bool) -> np.ndarray:
    """Raw ratings rounded to the release's scale, as half stars (1..10), a block at a time."""
    stars = np.empty(len(rating), dtype=np.int8)
    for a in range(0, len(rating), LINES_PER_WRITE):
        r = rating[a:a + LINES_PER_WRITE]
        r = np.clip(np.round(r * 2) / 2, 0.5, 5.0) if half else np.clip(np.round(r), 1, 5)
        stars[a:a + LINES_PER_WRITE] = r * 2
    return stars


def _catalog(rng: np.random.Generator, n: int, *, with_missing_years: bool) -> dict[str, np.ndarray | list]:
    """Movies by index: cluster blocks in chain order; ids, titles, years, genres, popularity."""
    cluster = np.sort(rng.integers(0, N_CLUSTERS, n))
    cluster[:N_CLUSTERS] = np.arange(N_CLUSTERS)  # every cluster non-empty ...
    cluster = np.sort(cluster)  # ... and contiguous
    start = np.searchsorted(cluster, np.arange(N_CLUSTERS))
    size = np.bincount(cluster, minlength=N_CLUSTERS)
    pos = np.arange(n) - start[cluster]
    year = 1930 + (pos * 70) // size[cluster] + rng.integers(-2, 3, n)
    ids = rng.permutation(np.sort(rng.choice(n + n // 20, n, replace=False)) + 1)  # gaps; id order != chain order
    extra_genre = rng.integers(0, len(GENRES), n)
    coin = rng.random((n, 4))
    # A loop over movies, but only string work: 60k movies take ~0.2 s.
    titles, genres = [], []
    for i, (c, p) in enumerate(zip(cluster.tolist(), pos.tolist())):
        cluster_genres, words = CLUSTERS[c][0], CLUSTERS[c][1].split()
        # neighbours along the chain share the first word; the second varies
        name = f"{words[(p // 3) % 8]} {words[(p * 5 + 1) % 8]}"
        if coin[i, 0] < 0.15:
            name = f"{name}, The"
        elif coin[i, 0] < 0.3:
            name = f"{name}: Part {p % 4 + 2}"
        titles.append(name if with_missing_years and i % 97 == 5 else f"{name} ({year[i]})")
        g = [cluster_genres[0]]
        if coin[i, 1] < 0.5:
            g.append(cluster_genres[1])
        if coin[i, 2] < 0.2:
            g.append(GENRES[extra_genre[i]])
        genres.append(sorted(set(g), key=GENRES.index))
    popularity = 1.0 / (rng.permutation(n) + 1.0) ** 0.8
    return {"cluster": cluster, "start": start, "size": size, "pos": pos, "ids": ids, "titles": titles,
            "genres": genres, "popularity": popularity}


def _interactions(rng: np.random.Generator, cat: dict, n_users: int,
                  per_user: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """(user_id, movie index, timestamp, raw rating) rows, users' sequences in time order."""
    start, size, cluster, pos = cat["start"], cat["size"], cat["cluster"], cat["pos"]
    cum = np.cumsum(cat["popularity"])
    before = np.concatenate([[0.0], cum])[start]  # popularity mass before each cluster's block
    mass = cum[start + size - 1] - before
    cluster_share = rng.dirichlet(np.full(N_CLUSTERS, 2.0))
    primary = rng.choice(N_CLUSTERS, n_users, p=cluster_share)
    secondary = (primary + rng.integers(1, N_CLUSTERS, n_users)) % N_CLUSTERS
    length = rng.integers(per_user[0], per_user[1] + 1, n_users)
    steps = 2 * per_user[1] + 10  # extra steps make up for repeats dropped below

    def in_cluster(c: np.ndarray, u: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(cum, before[c] + u * mass[c], side="right")
        return np.clip(idx, start[c], start[c] + size[c] - 1)

    seq = np.empty((n_users, steps), dtype=np.int32)
    chained = np.zeros((n_users, steps), dtype=bool)
    seq[:, 0] = in_cluster(primary, rng.random(n_users))
    for t in progress(range(1, steps), desc="synthetic sequences", total=steps - 1, unit="step"):
        cur = seq[:, t - 1]
        # The draws in one fixed order; each choice is then computed only for the users who take it.
        r = rng.random(n_users)
        hop = rng.integers(1, 4, n_users)
        use_secondary = rng.random(n_users) < SECONDARY_SHARE
        u_jump, u_explore = rng.random(n_users), rng.random(n_users)
        forward, jump = r < STEP_FORWARD, (r >= STEP_FORWARD) & (r < STEP_FORWARD + JUMP_IN_CLUSTER)
        explore = ~(forward | jump)
        c = cluster[cur[forward]]
        seq[forward, t] = start[c] + (pos[cur[forward]] + hop[forward]) % size[c]
        seq[jump, t] = in_cluster(np.where(use_secondary[jump], secondary[jump], primary[jump]), u_jump[jump])
        seq[explore, t] = np.minimum(np.searchsorted(cum, u_explore[explore] * cum[-1], side="right"),
                                     len(cum) - 1)
        chained[:, t] = forward
    user, flat, bonus = _first_visits(seq, chained, length, len(cum))
    del seq, chained
    gaps = rng.exponential(900.0, len(user))
    first_ts = rng.integers(FIRST_TS, LAST_START_TS, n_users)
    ts = _timestamps(gaps, user, first_ts)
    del gaps
    rating = rng.normal(0.0, 0.9, len(user))
    for a in range(0, len(user), LINES_PER_WRITE):  # in place, a block at a time: normal + (liked + bonus)
        u, c = user[a:a + LINES_PER_WRITE], cluster[flat[a:a + LINES_PER_WRITE]]
        liked = np.where(c == primary[u], 3.7, np.where(c == secondary[u], 3.3, 2.6))
        rating[a:a + LINES_PER_WRITE] += liked + 0.3 * bonus[a:a + LINES_PER_WRITE]
    return user + 1, flat, ts, rating


def _first_visits(seq: np.ndarray, chained: np.ndarray, length: np.ndarray,
                  n_movies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: the first `length` distinct movies of the walk (user, movie, chained), by block of users."""
    users, movies, bonus = [], [], []
    for a in range(0, len(seq), USER_BLOCK):
        block, chain = seq[a:a + USER_BLOCK], chained[a:a + USER_BLOCK]
        user = np.repeat(np.arange(a, a + len(block), dtype=np.int32), block.shape[1])
        flat = block.ravel()
        _, first = np.unique((user - a).astype(np.int64) * n_movies + flat, return_index=True)  # rated once
        first = np.sort(first)
        user, flat = user[first], flat[first]
        rank = np.arange(len(user)) - np.searchsorted(user, user)
        keep = rank < length[user]
        users.append(user[keep])
        movies.append(flat[keep])
        bonus.append(chain.ravel()[first][keep])
    return np.concatenate(users), np.concatenate(movies), np.concatenate(bonus)


def _timestamps(gaps: np.ndarray, user: np.ndarray, first_ts: np.ndarray) -> np.ndarray:
    """first_ts[user] + the running sum of whole gaps within each user's (contiguous) rows."""
    ts = np.empty(len(user), dtype=np.int64)
    bounds = np.searchsorted(user, np.arange(0, len(first_ts) + USER_BLOCK, USER_BLOCK))
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        u = user[a:b]
        total = np.cumsum(1 + gaps[a:b].astype(np.int64))
        starts = np.searchsorted(u, u)
        ts[a:b] = first_ts[u] + total - np.concatenate([[0], total])[starts]
    return ts


def _users(rng: np.random.Generator, n_users: int, ages: list[int]) -> tuple[np.ndarray, ...]:
    """gender, age (one of `ages`), occupation code 0..20, zip code."""
    gender = np.where(rng.random(n_users) < 0.72, "M", "F")
    age = np.asarray(ages)[rng.integers(0, len(ages), n_users)]
    occupation = rng.integers(0, 21, n_users)
    zips = rng.integers(1000, 99999, n_users)
    return gender, age, occupation, zips


def _write_lines(path: Path, lines: list[str], encoding: str = "latin-1") -> None:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


# The text of a rating of s half stars is LABELS[s] (index 0 unused).
WHOLE_LABELS = ["", *(str(s // 2) if s % 2 == 0 else "" for s in range(1, 11))]  # ml-1m, ml-100k: "4"
ML10M_LABELS = ["", *(str(s // 2) if s % 2 == 0 else f"{s / 2:.1f}" for s in range(1, 11))]  # "4", "3.5"
CSV_LABELS = ["", *(f"{s / 2:.1f}" for s in range(1, 11))]  # ml-latest: "4.0", "3.5"


def _write_ratings(path: Path, sep: str, order: np.ndarray, user: np.ndarray, movie: np.ndarray,
                   stars: np.ndarray, labels: list[str], ts: np.ndarray, *, header: str = "") -> None:
    """One `user sep movie sep rating sep timestamp` line per rating in `order`, LINES_PER_WRITE at a time.

    pyarrow's string kernels format the numbers (the same text as Python's str()) at a fraction of the
    time and memory of formatting each line in Python.
    """
    text = pa.array(labels)
    with open(path, "wb") as fh:
        fh.write(header.encode())
        for a in range(0, len(order), LINES_PER_WRITE):
            rows = order[a:a + LINES_PER_WRITE]
            fields = [pc.cast(pa.array(user[rows]), pa.string()), pc.cast(pa.array(movie[rows]), pa.string()),
                      text.take(pa.array(stars[rows])), pc.cast(pa.array(ts[rows]), pa.string())]
            lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*fields, sep), "", "\n")
            fh.write(_string_bytes(lines))


def _string_bytes(strings: pa.Array) -> memoryview:
    """The concatenated bytes of a string array's values, without a copy."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[strings.offset:strings.offset + len(strings) + 1]
    return memoryview(strings.buffers()[2])[offsets[0]:offsets[-1]]


def _write_ml1m(folder: Path, rng: np.random.Generator, cat: dict, n_users: int, user: np.ndarray,
                movie: np.ndarray, ts: np.ndarray, stars: np.ndarray) -> None:
    order = np.lexsort((rng.random(len(user)), user))  # grouped by user, unordered within (as ml-1m)
    _write_ratings(folder / "ratings.dat", "::", order, user, movie, stars, WHOLE_LABELS, ts)
    _write_movies_dat(folder / "movies.dat", cat, "latin-1")
    gender, age, occupation, zips = _users(rng, n_users, AGES_1M)
    _write_lines(folder / "users.dat", [f"{u + 1}::{gender[u]}::{age[u]}::{occupation[u]}::{zips[u]:05d}"
                                        for u in range(n_users)])


def _write_ml10m(folder: Path, rng: np.random.Generator, cat: dict, n_users: int, user: np.ndarray,
                 movie: np.ndarray, ts: np.ndarray, stars: np.ndarray) -> None:
    """ml-10m: no users.dat, ratings by user then movie with half stars ("4", "3.5"), UTF-8 movies."""
    order = np.lexsort((movie, user))
    _write_ratings(folder / "ratings.dat", "::", order, user, movie, stars, ML10M_LABELS, ts)
    _write_movies_dat(folder / "movies.dat", cat, "utf-8")


def _write_movies_dat(path: Path, cat: dict, encoding: str) -> None:
    by_id = np.argsort(cat["ids"])
    _write_lines(path, [f"{cat['ids'][i]}::{cat['titles'][i]}::{'|'.join(cat['genres'][i])}" for i in by_id],
                 encoding)


def _write_ml100k(folder: Path, rng: np.random.Generator, cat: dict, n_users: int, user: np.ndarray,
                  movie: np.ndarray, ts: np.ndarray, stars: np.ndarray) -> None:
    order = rng.permutation(len(user))  # u.data is in no particular order
    _write_ratings(folder / "u.data", "\t", order, user, movie, stars, WHOLE_LABELS, ts)
    genre_names = ["unknown", *GENRES]
    _write_lines(folder / "u.genre", [f"{g}|{i}" for i, g in enumerate(genre_names)] + [""])
    items = []
    for i in np.argsort(cat["ids"]):
        flags = "|".join("1" if g in cat["genres"][i] else "0" for g in genre_names)
        items.append(f"{cat['ids'][i]}|{cat['titles'][i]}|01-Jan-1995||http://example.invalid/{cat['ids'][i]}|{flags}")
    _write_lines(folder / "u.item", items)
    gender, age, occupation, zips = _users(rng, n_users, list(range(7, 74)))
    _write_lines(folder / "u.user", [f"{u + 1}|{age[u]}|{gender[u]}|{OCCUPATIONS_100K[occupation[u]]}|{zips[u]:05d}"
                                     for u in range(n_users)])
    _write_lines(folder / "u.occupation", OCCUPATIONS_100K)
    _write_lines(folder / "u.info", [f"{n_users} users", f"{len(cat['ids'])} items", f"{len(user)} ratings"])


def _write_csv(folder: Path, rng: np.random.Generator, cat: dict, n_users: int, user: np.ndarray,
               movie: np.ndarray, ts: np.ndarray, stars: np.ndarray) -> None:
    order = np.lexsort((movie, user))  # ml-latest: sorted by user, then movie
    _write_ratings(folder / "ratings.csv", ",", order, user, movie, stars, CSV_LABELS, ts,
                   header="userId,movieId,rating,timestamp\n")
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")  # quotes titles with commas, as ml-latest does
    out.writerow(["movieId", "title", "genres"])
    for i in np.argsort(cat["ids"]):
        out.writerow([cat["ids"][i], cat["titles"][i], "|".join(cat["genres"][i]) or "(no genres listed)"])
    (folder / "movies.csv").write_bytes(buf.getvalue().encode("utf-8"))
