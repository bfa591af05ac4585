"""train: PinSage movie embeddings learned from temporal positives with a full softmax over the catalog.

Each example is (the user's recent train movies -> the movie they watched next). Two queries are
scored against every movie's embedding: the latest movie alone (DGL's serving rule) and a weighted
mean of the last HISTORY_LEN movies whose position weights are learned here and served from
rule.json. The catalog is small (thousands of movies), so every step embeds all movies from one
sampled neighbourhood (resampled every RESAMPLE_EVERY steps) and uses a full softmax rather than
sampled negatives; the user's recent movies are masked out, as evaluation excludes seen movies.
Validation HR@10 of the served history rule picks the epoch and stops training early.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from recsys_tasks.artifacts import StepResult, run_step, step_key, write_json
from recsys_tasks.config import ConfigError, Settings
from recsys_tasks.errors import InputError
from recsys_tasks.graph.arrays import GraphArrays, load_arrays
from recsys_tasks.graph.sampler import Blocks, Frontier, WalkParams, make_sampler, sample_blocks
from recsys_tasks.graph.sequences import Sequences
from recsys_tasks.logs import get_logger, progress_bar
from recsys_tasks.model import rules
from recsys_tasks.model.metrics import evaluate_scorer
from recsys_tasks.model.pinsage import PinSage

log = get_logger(__name__)
HISTORY_LEN = 20
TEMPERATURE = 0.1
RESAMPLE_EVERY = 20
MIN_STEPS = 100
PATIENCE = 1  # epochs without a MIN_DELTA gain in validation HR@10 before stopping
MIN_DELTA = 0.002  # on ml-1m an epoch costs ~2 CPU minutes; later epochs gain ~0.001
INFER_WALKS = 100  # more walks when embedding for serving: steadier top-k neighbours


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device: 'cuda' was requested but torch sees no CUDA GPU (use --device auto or cpu)"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(processed: StepResult, graph: StepResult, settings: Settings) -> StepResult:
    device = resolve_device(settings.device)
    params = {**settings.training_params(), "device": device.type}
    inputs = {"preprocess": processed.key, "build_graph": graph.key}
    key = step_key("train", inputs, params, module=__name__)
    checkpoints = settings.artifacts / "train" / ".checkpoints" / key  # outlives a failed run's tmp folder

    def build(tmp: Path) -> dict[str, Any]:
        g = load_arrays(graph.path)
        if len(g.movie_idx) == 0:
            raise InputError(
                "the train split is empty: nothing to learn from",
                file=processed.out("train.parquet"),
                rule="train_not_empty",
            )
        val = pd.read_parquet(processed.out("val.parquet"), columns=["user_id", "movie_id"])
        result = fit(g, val, settings, device, checkpoints)
        facts = write_outputs(tmp, result, "v" + key[:12])
        shutil.rmtree(checkpoints, ignore_errors=True)
        return facts

    return run_step(
        settings.artifacts, "train", inputs=inputs, params=params, build=build, force=settings.force, key=key
    )


class HistoryRule(nn.Module):
    """Learned position weights (newest first) of the served history rule; starts as a half-life of 3."""

    def __init__(self, length: int = HISTORY_LEN) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.arange(length, dtype=torch.float32) * -np.log(2) / 3.0)

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.logits.masked_fill(~valid, float("-inf")), dim=1)
        return (w[..., None].to(h.dtype) * h).sum(1)

    def params(self) -> dict[str, Any]:
        w = torch.softmax(self.logits.detach().float(), 0).cpu().numpy()
        return {"name": "history", "weights": [round(float(x), 6) for x in w]}


@dataclass
class Validation:
    """Users with a held-out movie: train history (oldest first), target index, train movies seen."""

    histories: list[np.ndarray]
    targets: np.ndarray
    seen: sp.csr_matrix

    @classmethod
    def build(
        cls,
        g: GraphArrays,
        seqs: Sequences,
        held_out: pd.DataFrame,
        extra: dict[int, list[int]] | None = None,
    ) -> Validation:
        """`extra`: movies appended to a user's history (the val movie, when evaluating on test)."""
        users = np.searchsorted(g.user_ids, held_out["user_id"].to_numpy(np.int64))
        movies = np.searchsorted(g.movie_ids, held_out["movie_id"].to_numpy(np.int64))
        ok = (users < g.n_users) & (movies < g.n_movies)
        ok[ok] &= (g.user_ids[users[ok]] == held_out["user_id"].to_numpy()[ok]) & (
            g.movie_ids[movies[ok]] == held_out["movie_id"].to_numpy()[ok]
        )
        histories, targets, rows, cols = [], [], [], []
        for u, m in zip(users[ok], movies[ok]):
            h = np.concatenate([seqs.history(int(u)), np.asarray((extra or {}).get(int(u), []), np.int64)])
            if len(h) == 0 or m in set(h.tolist()):
                continue  # nothing to query from, or a re-watch the protocol excludes anyway
            rows.extend([len(targets)] * len(h))
            cols.extend(h.tolist())
            histories.append(h)
            targets.append(m)
        seen = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(targets), g.n_movies))
        return cls(histories, np.asarray(targets, np.int64), seen)

    def evaluate(self, emb: np.ndarray, rule: dict[str, Any]) -> dict[str, dict[str, float]]:
        out = {}
        for name, query in (
            ("latest", rules.latest_query),
            ("history", lambda v: rules.history_query(v, rule)),
        ):
            queries = np.stack([query(emb[h]) for h in self.histories])
            out[name] = evaluate_scorer(
                lambda rows, q=queries: q[rows] @ emb.T, np.arange(len(self.targets)), self.targets, self.seen
            )
        return out


@dataclass
class FitResult:
    model: PinSage
    embeddings: np.ndarray
    rule: dict[str, Any]
    best_epoch: int
    history: list[dict[str, Any]]
    config: dict[str, Any]


def fit(
    g: GraphArrays,
    val: pd.DataFrame,
    settings: Settings,
    device: torch.device,
    checkpoints: Path | None = None,
) -> FitResult:
    """Train with early stopping on validation HR@10; resume from `checkpoints` when it holds one."""
    torch.manual_seed(settings.seed)
    seqs = Sequences.from_graph(g)
    positions = seqs.targets()
    if len(positions) == 0:
        raise InputError(
            "no user has two train movies: no next-movie pairs to learn from", rule="train_pairs"
        )
    validation = Validation.build(g, seqs, val)
    if len(validation.targets) == 0:
        raise InputError(
            "no validation user with train history: nothing to pick an epoch by", rule="val_users"
        )
    sampler = make_sampler(settings.sampler, g, device)
    infer_sampler = make_sampler(settings.sampler, g, device, WalkParams(num_random_walks=INFER_WALKS))
    model, rule = PinSage(g, settings.embed_dim).to(device), HistoryRule().to(device)
    optimizer = torch.optim.Adam([*model.parameters(), *rule.parameters()], lr=settings.lr)
    items = torch.arange(g.n_movies, device=sampler.device)
    seq_items = torch.tensor(seqs.items, device=device)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "bad": 0}
    ckpt = checkpoints / "last.pt" if checkpoints else None
    if ckpt and ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=False)  # holds numpy arrays
        model.load_state_dict(saved["model"])
        rule.load_state_dict(saved["rule"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        log.info("train: resuming after epoch %d from %s", state["epoch"], ckpt)
    amp = device.type == "cuda"
    # a small catalog's pass is a handful of batches: repeat it so an epoch is at least MIN_STEPS updates
    batch_size = min(settings.batch_size, len(positions))  # a batch larger than the data is the data
    n_batches = max(-(-len(positions) // batch_size), MIN_STEPS)
    passes = -(-n_batches * batch_size // len(positions))
    while state["epoch"] < settings.epochs and state["bad"] < PATIENCE:
        epoch = state["epoch"] + 1
        torch.manual_seed(settings.seed * 100_003 + epoch)  # dropout: the same on a resumed run
        rng = np.random.default_rng([settings.seed, epoch])
        order = np.concatenate([rng.permutation(positions) for _ in range(passes)])
        model.train()
        started, sampling, total = time.perf_counter(), 0.0, 0.0
        bar = progress_bar(desc=f"train epoch {epoch}/{settings.epochs}", total=n_batches, unit="batch")
        for step in range(n_batches):
            if step % RESAMPLE_EVERY == 0:
                t0 = time.perf_counter()
                blocks = sample_blocks(sampler, items, model.n_layers, _seed(settings.seed, epoch, step)).to(
                    device
                )
                sampling += time.perf_counter() - t0
            batch = order[step * batch_size : (step + 1) * batch_size]
            window, valid = seqs.windows(batch, HISTORY_LEN)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = batch_loss(
                    model,
                    rule,
                    blocks,
                    torch.tensor(window, device=device),
                    torch.tensor(valid, device=device),
                    seq_items[torch.tensor(batch, device=device)],
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{total / (step + 1):.4f}", refresh=False)
        bar.close()
        train_s = time.perf_counter() - started
        emb = embed_all(model, infer_sampler, g.n_movies, device, settings.seed)
        metrics = validation.evaluate(emb, rule.params())
        record = {
            "epoch": epoch,
            "loss": total / n_batches,
            "train_s": round(train_s, 2),
            "sampler_s": round(sampling, 2),
            "val_hr@10": metrics["history"]["hr@10"],
            "val_latest_hr@10": metrics["latest"]["hr@10"],
            "val": metrics,
        }
        log.info(
            "train: epoch %d loss %.4f val HR@10 history %.4f latest %.4f (%.1fs, sampler %.1fs)",
            epoch,
            record["loss"],
            record["val_hr@10"],
            record["val_latest_hr@10"],
            train_s,
            sampling,
        )
        best = state["best"]
        # an epoch that gains less than MIN_DELTA counts against PATIENCE but is still kept if it is the best
        gained = record["val_hr@10"] - (best["val_hr@10"] if best else -1.0)
        state["bad"] = 0 if gained >= MIN_DELTA else state["bad"] + 1
        if gained > 0:
            state["best"] = {
                "val_hr@10": record["val_hr@10"],
                "epoch": epoch,
                "embeddings": emb,
                "rule": rule.params(),
                "model": {k: v.cpu().clone() for k, v in model.state_dict().items()},
            }
        state["history"].append(record)
        state["epoch"] = epoch
        if ckpt:
            save_checkpoint(
                ckpt,
                {
                    "model": model.state_dict(),
                    "rule": rule.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "state": state,
                },
            )
    best = state["best"]
    model.load_state_dict(best["model"])
    config = {
        "dim": settings.embed_dim,
        "n_layers": model.n_layers,
        "history_len": HISTORY_LEN,
        "temperature": TEMPERATURE,
        "sampler": type(sampler).__name__,
        "infer_walks": INFER_WALKS,
    }
    return FitResult(model, best["embeddings"], best["rule"], best["epoch"], state["history"], config)


def batch_loss(
    model: PinSage,
    rule: HistoryRule,
    blocks: Blocks,
    window: torch.Tensor,
    valid: torch.Tensor,
    target: torch.Tensor,
) -> torch.Tensor:
    """Softmax cross-entropy over all movies for the latest-movie query and the history query."""
    emb = model(blocks)  # [n_movies, dim]: blocks' output nodes are every movie, in index order
    h = emb[window]
    mask = torch.zeros(len(target), emb.shape[0], dtype=torch.bool, device=emb.device)
    mask.scatter_(1, window, valid & (window != target[:, None]))
    loss = emb.new_zeros(())
    for query in (h[:, 0], F.normalize(rule(h, valid).float(), dim=1)):
        logits = ((query / TEMPERATURE) @ emb.T).float()  # temperature on [B, d], not on [B, n_movies]
        loss = loss + F.cross_entropy(logits.masked_fill_(mask, float("-inf")), target)
    return loss


@torch.no_grad()
def embed_all(
    model: PinSage, sampler: Frontier, n_movies: int, device: torch.device, seed: int
) -> np.ndarray:
    """Every movie's served vector, from one seeded neighbourhood sample (deterministic for a seed)."""
    items = torch.arange(n_movies, device=sampler.device)
    blocks = sample_blocks(sampler, items, model.n_layers, _seed(seed, 0, -1)).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        emb = model.embed(blocks)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step) % (2**31)


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_outputs(folder: Path, r: FitResult, model_version: str) -> dict[str, Any]:
    np.save(folder / "embeddings.npy", r.embeddings.astype(np.float32))
    write_json(folder / "rule.json", r.rule)
    torch.save({"state_dict": r.model.state_dict(), "config": r.config, "rule": r.rule}, folder / "model.pt")
    write_json(folder / "metrics.json", {"best_epoch": r.best_epoch, "epochs": r.history})
    plot_curve(folder / "curve.png", r.history)
    best = next(h for h in r.history if h["epoch"] == r.best_epoch)
    return {
        "model_version": model_version,
        "best_epoch": r.best_epoch,
        "metrics": {"val_hr@10": best["val_hr@10"], "val_latest_hr@10": best["val_latest_hr@10"]},
        "counts": {"movies": int(r.embeddings.shape[0]), "epochs": len(r.history)},
        "dim": int(r.embeddings.shape[1]),
        "train_s": round(sum(h["train_s"] for h in r.history), 2),
        "sampler_s": round(sum(h["sampler_s"] for h in r.history), 2),
    }


def plot_curve(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["loss"] for h in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="train loss", title="loss")
    ax2.plot(epochs, [h["val_hr@10"] for h in history], marker="o", label="history rule")
    ax2.plot(epochs, [h["val_latest_hr@10"] for h in history], marker="o", label="latest movie")
    ax2.set(xlabel="epoch", ylabel="HR@10", title="validation HR@10")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
