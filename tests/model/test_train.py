"""Training on planted next-movie structure: it learns (sampled or full softmax), a step embeds only its
batch without its (history, target) edges, the sampler is keyed as resolved, it resumes after a crash,
it refuses bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_tasks.artifacts import StepResult
from recsys_tasks.config import ConfigError, Settings
from recsys_tasks.errors import InputError
from recsys_tasks.graph.arrays import load_arrays, save_arrays
from recsys_tasks.graph.build import build_graph
from recsys_tasks.graph.sampler import TorchPinSageSampler, resolve_sampler
from recsys_tasks.graph.sequences import Sequences
from recsys_tasks.model import rules
from recsys_tasks.model import train as train_mod
from recsys_tasks.model.evaluate import LATEST_RULE, Baselines, leave_one_out, read_interactions, score_rule
from recsys_tasks.model.train import HISTORY_LEN, Batches, train
from tests.graph.test_graph_build import write_planted

FAST = {"epochs": 3, "embed_dim": 16, "batch_size": 128, "lr": 0.01, "sampler": "torch", "device": "cpu"}


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def planted(tmp_path: Path, settings: Settings) -> tuple[StepResult, StepResult]:
    processed = write_planted(tmp_path / "pre", n_users=150)
    return processed, build_graph(processed, settings.artifacts)


@pytest.mark.parametrize("negatives", [8, 0], ids=["sampled softmax", "full softmax"])
def test_learns_next_movie_structure_popularity_cannot(planted, settings: Settings, negatives: int) -> None:
    processed, graph = planted
    result = train(processed, graph, settings.replace(**FAST, negatives=negatives))
    g = load_arrays(graph.path)
    emb = np.load(result.out("embeddings.npy"))
    rule = json.loads(result.out("rule.json").read_text())
    val = leave_one_out(processed.path, g.movie_ids, "val")
    pop = Baselines.fit(read_interactions(processed.path, "train"), g.movie_ids, val.latest).score(val)["popularity"]
    model = {"latest": score_rule(val, emb, LATEST_RULE), "history": score_rule(val, emb, rule)}
    assert pop["hr@10"] < 0.4
    assert model["latest"]["hr@10"] > pop["hr@10"] + 0.3
    assert model["history"]["hr@10"] > pop["hr@10"] + 0.3
    assert result.manifest["metrics"]["val_hr@10"] == pytest.approx(model["history"]["hr@10"])


@pytest.mark.parametrize("sampler", ["torch", "dgl"])
def test_outputs_follow_the_contract(planted, settings: Settings, sampler: str) -> None:
    processed, graph = planted
    s = settings.replace(**{**FAST, "epochs": 1, "sampler": sampler})
    result = train(processed, graph, s)
    emb = np.load(result.out("embeddings.npy"))
    assert emb.shape == (42, 16) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # unrated movies included
    assert result.manifest["model_version"] == "v" + result.key[:12]
    assert result.manifest["params"]["device"] == "cpu"
    assert {"model.pt", "metrics.json", "curve.png", "embeddings.npy", "rule.json"} <= {
        p.name for p in result.path.iterdir()
    }
    rule = json.loads(result.out("rule.json").read_text())
    assert rules.history_query(emb[:5], rule).shape == (16,)
    assert not (s.artifacts / "train" / ".checkpoints" / result.key).exists()
    assert train(processed, graph, s).skipped


def test_resume_after_a_crash_matches_an_uninterrupted_run(
    planted,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    processed, graph = planted
    whole = train(processed, graph, settings.replace(**FAST))

    crashing = settings.replace(**FAST, home=tmp_path / "crash")
    graph2 = build_graph(processed, crashing.artifacts)
    real_save = train_mod.save_checkpoint

    def save_then_crash(path: Path, obj: dict) -> None:
        real_save(path, obj)
        raise RuntimeError("worker lost after epoch 1")

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_crash)
    with pytest.raises(RuntimeError, match="worker lost"):
        train(processed, graph2, crashing)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    with caplog.at_level(logging.INFO, logger="recsys_tasks.model.train"):
        resumed = train(processed, graph2, crashing)
    assert "resuming after epoch 1" in caplog.text
    assert resumed.key == whole.key
    assert np.array_equal(np.load(resumed.out("embeddings.npy")), np.load(whole.out("embeddings.npy")))
    assert untimed(resumed) == untimed(whole)
    assert len(untimed(whole)) == FAST["epochs"] or whole.manifest["best_epoch"] < FAST["epochs"]


def untimed(result: StepResult) -> list[dict]:
    epochs = json.loads(result.out("metrics.json").read_text())["epochs"]
    return [{k: v for k, v in e.items() if not k.endswith("_s")} for e in epochs]


def test_empty_train_split_is_bad_input(settings: Settings, tmp_path: Path) -> None:
    processed = write_planted(tmp_path / "pre", n_users=5)
    folder = tmp_path / "graph"
    folder.mkdir()
    full = load_arrays(build_graph(processed, settings.artifacts).path)
    empty = type(full)(
        **{
            **full.__dict__,
            **{k: getattr(full, k)[:0] for k in ("user_idx", "movie_idx", "rating", "timestamp")},
        }
    )
    save_arrays(folder, empty)
    graph = StepResult("build_graph", folder, {"key": "empty"}, skipped=True)
    with pytest.raises(InputError, match="train split is empty.*train_not_empty"):
        train(processed, graph, settings.replace(**FAST))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_is_a_config_error(planted, settings: Settings) -> None:
    processed, graph = planted
    with pytest.raises(ConfigError, match="cuda.*no CUDA GPU"):
        train(processed, graph, settings.replace(**{**FAST, "device": "cuda"}))


def test_a_step_embeds_only_its_batch_and_never_sees_history_target_edges(planted) -> None:
    g = load_arrays(planted[1].path)
    seqs = Sequences.from_graph(g)
    positions = seqs.targets()
    batches = Batches(seqs, TorchPinSageSampler(g), 2, positions, negatives=4)
    b = batches.make(positions[:3], seed=7)
    nodes = b.blocks.output_nodes
    window = seqs.windows(positions[:3], HISTORY_LEN)
    needed = set(window[0][window[1]].tolist()) | set(seqs.items[positions[:3]].tolist())
    assert needed <= set(nodes.tolist()) and len(nodes) <= len(needed) + 4 < g.n_movies
    assert len(b.candidates) <= 3 + 4 and (b.log_q <= 0).all()  # log of a probability
    assert torch.equal(nodes[b.target], torch.as_tensor(seqs.items[positions[:3]]))
    edges = {(s_, d_) for layer in b.blocks.layers
             for s_, d_ in zip(b.blocks.input_nodes[layer.src].tolist(), b.blocks.input_nodes[layer.dst].tolist())}
    for history, valid, target in zip(*window, seqs.items[positions[:3]].tolist()):
        for h in history[valid].tolist():
            assert (h, target) not in edges and (target, h) not in edges


def test_auto_sampler_is_keyed_as_the_sampler_it_resolves_to(planted, settings: Settings) -> None:
    processed, graph = planted
    auto = train(processed, graph, settings.replace(**{**FAST, "epochs": 1, "sampler": "auto"}))
    assert auto.manifest["params"]["sampler"] == resolve_sampler("auto")
    explicit = train(processed, graph, settings.replace(**{**FAST, "epochs": 1, "sampler": resolve_sampler("auto")}))
    assert explicit.skipped and explicit.key == auto.key
