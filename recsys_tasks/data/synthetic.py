"""Seeded synthetic MovieLens snapshots in the real file formats, with taste structure a model can learn.

The catalog is split into taste clusters, each tied to two genres and its own title words. Within a
cluster the movies form a chain (a ring): neighbours share title words and come from nearby years.
Each user has a primary and a secondary cluster and watches a sequence that mostly steps forward
along the chain from the previous movie (so the next movie is predictable from the last one), sometimes
jumps to a popular movie of one of their clusters, and now and then explores the whole catalog.
Popularity follows a Zipf-like law. Same arguments and seed -> byte-identical files.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import numpy as np

from recsys_tasks.logs import get_logger

log = get_logger(__name__)
FORMATS = ("ml-1m", "ml-100k", "csv")
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


def write_snapshot(folder: Path, *, n_users: int, fmt: str = "ml-1m", seed: int = 0,
                   n_movies: int | None = None, ratings_per_user: tuple[int, int] = (20, 60)) -> Path:
    """Write a release in `fmt` ("ml-1m", "ml-100k" or "csv") as `folder` (replacing it); returns `folder`."""
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
    if fmt == "csv":
        rating = np.clip(np.round(rating * 2) / 2, 0.5, 5.0)
    else:
        rating = np.clip(np.round(rating), 1, 5)
    # Written beside `folder`, then renamed: an interrupted run never leaves a half snapshot behind.
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = {"ml-1m": _write_ml1m, "ml-100k": _write_ml100k, "csv": _write_csv}[fmt]
    writer(tmp, rng, catalog, n_users, users, catalog["ids"][movies], ts, rating)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log.info("synthetic %s snapshot: %d users, %d movies, %d ratings -> %s", fmt, n_users, n_movies,
             len(users), folder)
    return folder


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
    titles, genres = [], []
    extra_genre = rng.integers(0, len(GENRES), n)
    coin = rng.random((n, 4))
    for i in range(n):
        c, p = int(cluster[i]), int(pos[i])
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

    def in_cluster(c: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(cum, before[c] + rng.random(len(c)) * mass[c], side="right")
        return np.clip(idx, start[c], start[c] + size[c] - 1)

    seq = np.empty((n_users, steps), dtype=np.int64)
    chained = np.zeros((n_users, steps), dtype=bool)
    seq[:, 0] = in_cluster(primary)
    for t in range(1, steps):
        cur = seq[:, t - 1]
        r = rng.random(n_users)
        forward = start[cluster[cur]] + (pos[cur] + rng.integers(1, 4, n_users)) % size[cluster[cur]]
        jump = in_cluster(np.where(rng.random(n_users) < SECONDARY_SHARE, secondary, primary))
        explore = np.minimum(np.searchsorted(cum, rng.random(n_users) * cum[-1], side="right"), len(cum) - 1)
        seq[:, t] = np.select([r < STEP_FORWARD, r < STEP_FORWARD + JUMP_IN_CLUSTER], [forward, jump], explore)
        chained[:, t] = r < STEP_FORWARD
    user = np.repeat(np.arange(n_users), steps)
    flat = seq.ravel()
    _, first = np.unique(user * len(cum) + flat, return_index=True)  # a user rates a movie once
    first = np.sort(first)
    user, flat = user[first], flat[first]
    rank = np.arange(len(user)) - np.searchsorted(user, user)
    keep = rank < length[user]
    user, flat = user[keep], flat[keep]
    gaps = 1 + rng.exponential(900.0, len(user)).astype(np.int64)
    first_ts = rng.integers(FIRST_TS, LAST_START_TS, n_users)
    ts = first_ts[user] + _cumsum_by_group(gaps, user)
    liked = np.where(cluster[flat] == primary[user], 3.7, np.where(cluster[flat] == secondary[user], 3.3, 2.6))
    rating = liked + 0.3 * chained.ravel()[first][keep] + rng.normal(0.0, 0.9, len(user))
    return user + 1, flat, ts, rating


def _cumsum_by_group(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running sum within each run of equal `group` values (groups contiguous)."""
    total = np.cumsum(values)
    starts = np.searchsorted(group, group)
    return total - np.concatenate([[0], total])[starts]


def _users(rng: np.random.Generator, n_users: int, ages: list[int]) -> tuple[np.ndarray, ...]:
    """gender, age (one of `ages`), occupation code 0..20, zip code."""
    gender = np.where(rng.random(n_users) < 0.72, "M", "F")
    age = np.asarray(ages)[rng.integers(0, len(ages), n_users)]
    occupation = rng.integers(0, 21, n_users)
    zips = rng.integers(1000, 99999, n_users)
    return gender, age, occupation, zips


def _write_lines(path: Path, lines: list[str], encoding: str = "latin-1") -> None:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def _write_ml1m(folder: Path, rng: np.random.Generator, cat: dict, n_users: int, user: np.ndarray,
                movie: np.ndarray, ts: np.ndarray, rating: np.ndarray) -> None:
    order = np.lexsort((rng.random(len(user)), user))  # grouped by user, unordered within (as ml-1m)
    _write_lines(folder / "ratings.dat", list(map("{}::{}::{}::{}".format, user[order].tolist(),
                                                  movie[order].tolist(), rating[order].astype(int).tolist(),
                                                  ts[order].tolist())))
    by_id = np.argsort(cat["ids"])
    _write_lines(folder / "movies.dat", [f"{cat['ids'][i]}::{cat['titles'][i]}::{'|'.join(cat['genres'][i])}"
                                         for i in by_id])
    gender, age, occupation, zips = _users(rng, n_users, AGES_1M)
    _write_lines(folder / "users.dat", [f"{u + 1}::{gender[u]}::{age[u]}::{occupation[u]}::{zips[u]:05d}"
                                        for u in range(n_users)])


def _write_ml100k(folder: Path, rng: np.random.Generator, cat: dict, n_users: int, user: np.ndarray,
                  movie: np.ndarray, ts: np.ndarray, rating: np.ndarray) -> None:
    order = rng.permutation(len(user))  # u.data is in no particular order
    _write_lines(folder / "u.data", list(map("{}\t{}\t{}\t{}".format, user[order].tolist(), movie[order].tolist(),
                                             rating[order].astype(int).tolist(), ts[order].tolist())))
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
               movie: np.ndarray, ts: np.ndarray, rating: np.ndarray) -> None:
    order = np.lexsort((movie, user))  # ml-latest: sorted by user, then movie
    lines = ["userId,movieId,rating,timestamp"]
    lines += map("{},{},{:.1f},{}".format, user[order].tolist(), movie[order].tolist(), rating[order].tolist(),
                 ts[order].tolist())
    _write_lines(folder / "ratings.csv", lines, "utf-8")
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")  # quotes titles with commas, as ml-latest does
    out.writerow(["movieId", "title", "genres"])
    for i in np.argsort(cat["ids"]):
        out.writerow([cat["ids"][i], cat["titles"][i], "|".join(cat["genres"][i]) or "(no genres listed)"])
    (folder / "movies.csv").write_bytes(buf.getvalue().encode("utf-8"))
