"""The RecBole worker of bench/peers.py: train one sequential model within a time budget, score it two ways.

Runs in bench/.peers-venv (RecBole, its own torch), never in the project's venv. It reads the atomic
files and heldout.npz that bench/peers.py exported, trains with RecBole's model and data loader (its
loss, RecBole's default optimiser: Adam at the config's learning rate), checks the budget after every
batch, evaluates validation after every epoch (and when the budget stops it), keeps the best state by
validation HR@10, and writes one JSON file. Metrics come from the project's own code
(recsys_tasks.model.metrics, numpy and scipy only), imported from the repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import get_model, get_trainer, init_seed

from recsys_tasks.model.metrics import metrics_from_ranks, ranks_excluding

MAX_LEN = 50


def recbole_config(model: str, atomic: Path, device: str) -> Config:
    return Config(model=model, dataset="ml", config_dict={
        "data_path": str(atomic), "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]}, "alias_of_item_id": ["item_id_list"],
        "MAX_ITEM_LIST_LENGTH": MAX_LEN, "train_neg_sample_args": None, "loss_type": "CE",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Hit", "NDCG"], "topk": [10, 20], "valid_metric": "Hit@10",
        "device": device, "use_gpu": device != "cpu", "show_progress": False, "seed": 2020, "reproducibility": True,
        "checkpoint_dir": str(atomic / "saved"), "state": "WARNING",
    })


class Scorer:
    """Scores the project's Heldouts with the model's full_sort_predict, in the project's catalog index space."""

    def __init__(self, dataset, heldout: np.lib.npyio.NpzFile, device: torch.device) -> None:
        catalog = heldout["catalog"]
        field = dataset.iid_field
        token_id = dataset.field2token_id[field]  # token (str movie id) -> RecBole's internal id
        self.internal = np.array([token_id.get(str(m), 0) for m in catalog.tolist()], np.int64)  # 0: padding
        self.known = self.internal > 0  # movies RecBole never saw in any file cannot be recommended
        self.heldout, self.device = heldout, device

    @torch.no_grad()
    def ranks(self, model, split: str, *, exclude_seen: bool = True, batch: int = 512) -> np.ndarray:
        items, starts, targets = (self.heldout[f"{split}_{k}"] for k in ("items", "starts", "targets"))
        model.eval()
        out = []
        for lo in range(0, len(targets), batch):
            hi = min(lo + batch, len(targets))
            seq = np.zeros((hi - lo, MAX_LEN), np.int64)
            length = np.zeros(hi - lo, np.int64)
            for r in range(lo, hi):
                hist = self.internal[items[starts[r]:starts[r + 1]]][-MAX_LEN:]
                seq[r - lo, :len(hist)] = hist  # RecBole's sequences: left-aligned, zero-padded
                length[r - lo] = len(hist)
            inter = Interaction({model.ITEM_SEQ: torch.from_numpy(seq), model.ITEM_SEQ_LEN: torch.from_numpy(length)})
            scores = model.full_sort_predict(inter.to(self.device)).cpu().numpy().astype(np.float64)
            catalog_scores = np.zeros((hi - lo, len(self.internal)))
            catalog_scores[:, self.known] = scores[:, self.internal[self.known]]
            if exclude_seen:
                rows = np.repeat(np.arange(hi - lo), np.diff(starts[lo:hi + 1]))
                cols = items[starts[lo]:starts[hi]]
            else:
                rows = cols = np.array([], np.int64)
            out.append(ranks_excluding(catalog_scores, targets[lo:hi], rows, cols, self.known))
        model.train()
        return np.concatenate(out)

    def metrics(self, model, split: str, **kw) -> dict[str, float]:
        return metrics_from_ranks(self.ranks(model, split, **kw))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atomic", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--budget-minutes", type=float, required=True)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    config = recbole_config(args.model, args.atomic, args.device)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _valid, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    scorer = Scorer(dataset, np.load(args.atomic / "ml" / "heldout.npz"), config["device"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])

    budget_s = args.budget_minutes * 60
    started, cpu0 = time.perf_counter(), time.process_time()
    best = {"hr@10": -1.0, "state": None, "at": None}
    epoch = batches = stale = 0
    stopped_by_budget = False
    curve = []

    def validate(at: str) -> None:
        nonlocal stale
        m = scorer.metrics(model, "val")
        curve.append({"at": at, "val_hr@10": m["hr@10"], "wall_s": round(time.perf_counter() - started, 1)})
        print(f"{args.model} {at}: val HR@10 {m['hr@10']:.4f} NDCG@10 {m['ndcg@10']:.4f}", flush=True)
        if m["hr@10"] > best["hr@10"]:
            best.update({"hr@10": m["hr@10"], "state": copy.deepcopy(model.state_dict()), "at": at})
            stale = 0
        else:
            stale += 1

    model.train()
    while not stopped_by_budget and stale < args.patience:
        batches = 0
        for inter in train_data:
            loss = model.calculate_loss(inter.to(config["device"]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            batches += 1
            if batches % 50 == 0:
                print(f"{args.model} epoch {epoch + 1} batch {batches}/{len(train_data)} loss {loss.item():.4f} "
                      f"({time.perf_counter() - started:.0f}s)", flush=True)
            if time.perf_counter() - started > budget_s:
                stopped_by_budget = True
                break
        if stopped_by_budget:
            validate(f"epoch {epoch + 1}, batch {batches} (budget)")
            break
        epoch += 1
        batches = 0
        validate(f"epoch {epoch}")
    train_s, train_cpu = time.perf_counter() - started, time.process_time() - cpu0

    model.load_state_dict(best["state"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    recbole_test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    result = {
        "model": args.model, "recbole": __import__("recbole").__version__, "torch": torch.__version__,
        "budget_minutes": args.budget_minutes, "stopped_by_budget": stopped_by_budget, "patience": args.patience,
        "epochs_completed": epoch, "batches_in_last_epoch": batches, "batches_per_epoch": len(train_data),
        "best": best["at"], "train_s": round(train_s, 1), "train_cpu_s": round(train_cpu, 1), "curve": curve,
        "config": {k: config[k] for k in ("learning_rate", "train_batch_size", "hidden_size", "MAX_ITEM_LIST_LENGTH",
                                          "loss_type") if k in config},
        "project": {split: scorer.metrics(model, split) for split in ("val", "test")},
        "project_unmasked_test": scorer.metrics(model, "test", exclude_seen=False),
        "recbole_evaluator_test": {k: float(v) for k, v in recbole_test.items()},
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
