"""train: PinSage movie embeddings learned minibatch by minibatch from temporal positives.

Each example is (the user's recent train movies -> the movie they watched next). A step embeds only
the movies the batch needs (its history windows, its targets and its negatives) from PinSAGE
neighbourhoods sampled for those movies alone, with the edges between a history movie and its target
removed, as DGL's example removes (query, positive) edges, so a target cannot be read off its own
neighbourhood. Two queries are trained: the latest movie alone (DGL's serving rule) and the served
history rule, a weighted mean of the last HISTORY_LEN movies whose position weights are learned here
and served from rule.json. Each is scored against the batch's targets plus `negatives` movies drawn
uniformly, with a sampled softmax and the logQ correction (Yi et al. 2019), so a step's cost is bounded
by the batch, not the catalog; `negatives=0` scores every movie (a full softmax). The user's recent
movies are masked out, as evaluation excludes seen movies. Batches are sampled ahead of training in a
background thread.

Training runs to a budget in updates that fits the data: an epoch is one pass over the examples
clamped to [MIN_STEPS, MAX_STEPS] updates, at most `epochs` of them; after each, the served rule's
validation HR@10 (the evaluate step's own evaluator) picks the best epoch and stops training early.
Launched by torchrun with several processes, it trains data-parallel (DistributedDataParallel): each
process takes its share of every batch.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recsys_tasks.artifacts import StepResult, run_step, step_key, write_json
from recsys_tasks.config import ConfigError, Settings
from recsys_tasks.errors import InputError
from recsys_tasks.graph.arrays import GraphArrays, load_arrays
from recsys_tasks.graph.sampler import (
    Blocks,
    Frontier,
    WalkParams,
    make_sampler,
    resolve_sampler,
    sample_blocks,
)
from recsys_tasks.graph.sequences import Sequences
from recsys_tasks.logs import get_logger, progress_bar
from recsys_tasks.model import distributed
from recsys_tasks.model.evaluate import LATEST_RULE, leave_one_out, score_rule
from recsys_tasks.model.pinsage import PinSage

log = get_logger(__name__)
HISTORY_LEN = 20
TEMPERATURE = 0.1
MIN_STEPS = 100
MAX_STEPS = 2000  # ~2 M examples at the default batch: ml-1m's pass is 960 updates, ml-25m's 24,000
PATIENCE = 1  # epochs without a MIN_DELTA gain in validation HR@10 before stopping
MIN_DELTA = 0.002  # on ml-1m an epoch costs ~2 CPU minutes; later epochs gain ~0.001
INFER_WALKS = 100  # more walks when embedding for serving: steadier top-k neighbours
EMBED_CHUNK = 8192  # movies embedded at once for validation and serving: memory bounded by the chunk


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
    rank, processes = distributed.join(device)
    # the sampler actually used, never "auto": one model_version always means one sampler
    params = {**settings.training_params(), "sampler": resolve_sampler(settings.sampler),
              "device": device.type, "processes": processes}
    inputs = {"preprocess": processed.key, "build_graph": graph.key}
    key = step_key("train", inputs, params, module=__name__)
    checkpoints = settings.artifacts / "train" / ".checkpoints" / key  # outlives a failed run's tmp folder
    s = settings.replace(sampler=params["sampler"])

    def fit_step() -> FitResult:
        g = load_arrays(graph.path)
        if len(g.movie_idx) == 0:
            raise InputError(
                "the train split is empty: nothing to learn from",
                file=processed.out("train.parquet"),
                rule="train_not_empty",
            )
        return fit(g, processed.path, s, device, checkpoints)

    built = False

    def build(tmp: Path) -> dict[str, Any]:
        nonlocal built
        built = distributed.announce(True, device)  # the other processes train alongside
        facts = write_outputs(tmp, fit_step(), "v" + key[:12])
        shutil.rmtree(checkpoints, ignore_errors=True)
        return facts

    if rank == 0:
        result = run_step(
            settings.artifacts, "train", inputs=inputs, params=params, build=build, force=settings.force, key=key
        )
        if not built:
            distributed.announce(False, device)  # nothing to train: the others stop waiting
    elif distributed.announce(False, device):
        fit_step()  # rank 0 writes the outputs
    distributed.barrier()
    if rank == 0:
        return result
    return run_step(settings.artifacts, "train", inputs=inputs, params=params, build=_built_by_rank_0, key=key)


def _built_by_rank_0(tmp: Path) -> dict[str, Any]:
    raise RuntimeError("train: rank 0 did not write the step's folder")


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
class Batch:
    """One step's work. Node indices are local: positions in `nodes` (global movie indices, sorted)."""

    blocks: Blocks  # the neighbourhoods of `nodes`, which are the blocks' output nodes in order
    window: torch.Tensor  # [B, HISTORY_LEN] the history movies, newest first
    valid: torch.Tensor  # [B, HISTORY_LEN] which window entries exist
    target: torch.Tensor  # [B] the movie watched next
    candidates: torch.Tensor  # [C] the movies scored: the batch's targets and the drawn negatives
    log_q: torch.Tensor  # [C] log of each candidate's chance to be among them (0: a full softmax)

    def to(self, device: torch.device) -> Batch:
        return Batch(self.blocks.to(device), *(t.to(device) for t in (
            self.window, self.valid, self.target, self.candidates, self.log_q)))


class Batches:
    """Builds batches of examples: positions in `seqs.items` (each the movie that came next)."""

    def __init__(self, seqs: Sequences, sampler: Frontier, n_layers: int, positions: np.ndarray,
                 negatives: int) -> None:
        self.seqs, self.sampler, self.n_layers, self.negatives = seqs, sampler, n_layers, negatives
        # how often each movie is an example's target: the in-batch candidates' sampling distribution
        self.target_p = np.bincount(seqs.items[positions], minlength=seqs.n_movies) / max(len(positions), 1)

    def make(self, positions: np.ndarray, seed: int) -> Batch:
        m = self.seqs.n_movies
        window, valid = self.seqs.windows(positions, HISTORY_LEN)
        target = self.seqs.items[positions]
        if self.negatives == 0:
            candidates, log_q = np.arange(m), np.zeros(m)
        else:
            drawn = np.random.default_rng(seed).integers(0, m, self.negatives)
            candidates = np.unique(np.concatenate([target, drawn]))
            # P(movie among the candidates) = 1 - P(no batch target is it) * P(no draw is it)
            q = 1 - (1 - self.target_p[candidates]) ** len(target) * (1 - 1 / m) ** self.negatives
            log_q = np.log(q)
        nodes = np.unique(np.concatenate([candidates, window[valid], target]))
        pairs = np.stack([window[valid], np.repeat(target, valid.sum(1))])
        exclude = np.concatenate([pairs[0] * m + pairs[1], pairs[1] * m + pairs[0]])
        blocks = sample_blocks(self.sampler, torch.from_numpy(nodes).to(self.sampler.device), self.n_layers,
                               seed, exclude=torch.from_numpy(exclude))
        local = lambda x: torch.from_numpy(np.searchsorted(nodes, x))
        return Batch(blocks, local(window), torch.from_numpy(valid), local(target), local(candidates),
                     torch.from_numpy(log_q).float())


def ahead(make: Callable[..., Batch], jobs: Iterable[tuple[Any, ...]], depth: int = 2) -> Iterator[Batch]:
    """make(*job) for each job, computed up to `depth` jobs ahead in one background thread (in order)."""
    with ThreadPoolExecutor(1, thread_name_prefix="sampler") as pool:
        pending: deque[Future[Batch]] = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(make, *job))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


class Net(nn.Module):
    """The encoder and the history rule as one module, the unit DistributedDataParallel synchronises."""

    def __init__(self, model: PinSage, rule: HistoryRule) -> None:
        super().__init__()
        self.model, self.rule = model, rule

    def forward(self, b: Batch) -> torch.Tensor:
        """Sampled-softmax cross-entropy of the latest-movie query and the history query."""
        emb = self.model(b.blocks)  # [nodes, dim], unit vectors
        h = emb[b.window]
        cand = emb[b.candidates]
        # which candidate column each node is (-1: not a candidate), to mask the user's window movies
        column = torch.full((len(emb),), -1, dtype=torch.long, device=emb.device)
        column[b.candidates] = torch.arange(len(b.candidates), device=emb.device)
        col = column[b.window]
        seen = b.valid & (col >= 0) & (b.window != b.target[:, None])
        mask = torch.zeros(len(b.target), len(b.candidates), dtype=torch.int32, device=emb.device)
        mask = mask.scatter_add_(1, col.clamp(min=0), seen.int()) > 0
        target = column[b.target]
        loss = emb.new_zeros((), dtype=torch.float32)
        for query in (h[:, 0], F.normalize(self.rule(h, b.valid).float(), dim=1)):
            logits = ((query / TEMPERATURE) @ cand.T).float() - b.log_q  # temperature on [B, d], not [B, C]
            loss = loss + F.cross_entropy(logits.masked_fill_(mask, float("-inf")), target)
        return loss


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
    processed: Path,
    settings: Settings,
    device: torch.device,
    checkpoints: Path | None = None,
) -> FitResult:
    """Train with early stopping on validation HR@10; resume from `checkpoints` when it holds one."""
    rank, processes = distributed.world()
    torch.manual_seed(settings.seed)
    seqs = Sequences.from_graph(g)
    positions = seqs.targets()
    if len(positions) == 0:
        raise InputError(
            "no user has two train movies: no next-movie pairs to learn from", rule="train_pairs"
        )
    validation = leave_one_out(processed, g.movie_ids, "val")
    sampler = make_sampler(settings.sampler, g, device)
    infer_sampler = make_sampler(settings.sampler, g, device, WalkParams(num_random_walks=INFER_WALKS))
    model, rule = PinSage(g, settings.embed_dim).to(device), HistoryRule().to(device)
    net = Net(model, rule)
    trained = DistributedDataParallel(net) if processes > 1 else net
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    batches = Batches(seqs, sampler, model.n_layers, positions, settings.negatives)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "bad": 0}
    ckpt = checkpoints / "last.pt" if checkpoints else None
    if ckpt and ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=False)  # holds numpy arrays
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        log.info("train: resuming after epoch %d from %s", state["epoch"], ckpt)
    amp = device.type == "cuda"
    # an epoch is one pass, but at least MIN_STEPS updates (a small release's pass is a handful of
    # batches) and at most MAX_STEPS (a large release is validated, and can stop, every MAX_STEPS updates)
    batch_size = min(settings.batch_size, len(positions))  # a batch larger than the data is the data
    n_batches = min(max(-(-len(positions) // batch_size), MIN_STEPS), MAX_STEPS)
    passes = -(-n_batches * batch_size // len(positions))
    share = -(-batch_size // processes)  # this process's part of every batch
    while state["epoch"] < settings.epochs and state["bad"] < PATIENCE:
        epoch = state["epoch"] + 1
        torch.manual_seed(settings.seed * 100_003 + epoch)  # dropout: the same on a resumed run
        rng = np.random.default_rng([settings.seed, epoch])
        order = np.concatenate([rng.permutation(positions) for _ in range(passes)])
        jobs = (
            (order[step * batch_size + rank * share: min(step * batch_size + (rank + 1) * share,
                                                         (step + 1) * batch_size)],
             _seed(settings.seed, epoch, step * processes + rank))
            for step in range(n_batches)
        )
        net.train()
        started, total = time.perf_counter(), 0.0
        bar = progress_bar(desc=f"train epoch {epoch}/{settings.epochs}", total=n_batches, unit="batch")
        waited = 0.0
        batch_iter = ahead(batches.make, jobs)
        for step in range(n_batches):
            t0 = time.perf_counter()
            b = next(batch_iter).to(device)
            waited += time.perf_counter() - t0
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = trained(b)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{total / (step + 1):.4f}", refresh=False)
        batch_iter.close()
        bar.close()
        train_s = time.perf_counter() - started
        emb = embed_all(model, infer_sampler, g.n_movies, device, settings.seed)
        record = {
            "epoch": epoch,
            "updates": n_batches,
            "loss": total / n_batches,
            "train_s": round(train_s, 2),
            "sampler_wait_s": round(waited, 2),
            "val": {"history": score_rule(validation, emb, rule.params()), "latest": score_rule(validation, emb, LATEST_RULE)},
        }
        record["val_hr@10"] = record["val"]["history"]["hr@10"]
        record["val_latest_hr@10"] = record["val"]["latest"]["hr@10"]
        log.info(
            "train: epoch %d (%d updates) loss %.4f val HR@10 history %.4f latest %.4f (%.1fs, %.1fs waiting for the sampler)",
            epoch,
            n_batches,
            record["loss"],
            record["val_hr@10"],
            record["val_latest_hr@10"],
            train_s,
            waited,
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
        if ckpt and rank == 0:
            save_checkpoint(ckpt, {"net": net.state_dict(), "optimizer": optimizer.state_dict(), "state": state})
    best = state["best"]
    model.load_state_dict(best["model"])
    config = {
        "dim": settings.embed_dim,
        "n_layers": model.n_layers,
        "history_len": HISTORY_LEN,
        "temperature": TEMPERATURE,
        "negatives": settings.negatives,
        "sampler": type(sampler).__name__,
        "infer_walks": INFER_WALKS,
        "processes": processes,
    }
    return FitResult(model, best["embeddings"], best["rule"], best["epoch"], state["history"], config)


@torch.no_grad()
def embed_all(
    model: PinSage, sampler: Frontier, n_movies: int, device: torch.device, seed: int
) -> np.ndarray:
    """Every movie's served vector, EMBED_CHUNK movies at a time from seeded neighbourhood samples."""
    out = []
    for lo in range(0, n_movies, EMBED_CHUNK):
        items = torch.arange(lo, min(lo + EMBED_CHUNK, n_movies), device=sampler.device)
        blocks = sample_blocks(sampler, items, model.n_layers, _seed(seed, 0, -1 - lo // EMBED_CHUNK)).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model.embed(blocks))
    emb = np.concatenate(out)
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
        "counts": {"movies": int(r.embeddings.shape[0]), "epochs": len(r.history),
                   "updates": sum(h["updates"] for h in r.history)},
        "dim": int(r.embeddings.shape[1]),
        "train_s": round(sum(h["train_s"] for h in r.history), 2),
        "sampler_wait_s": round(sum(h["sampler_wait_s"] for h in r.history), 2),
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
