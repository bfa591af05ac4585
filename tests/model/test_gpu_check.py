"""bench/gpu_check.sh as a GPU box runs it (the pipeline's own train and evaluate steps, the torch
sampler), on the CPU here: it prints each epoch and every method's figures and ends with one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from recsys_tasks.data.synthetic import write_snapshot
from recsys_tasks.model.evaluate import METHODS
from tests.conftest import REPO


def test_gpu_check_runs_the_pipeline_steps_on_the_cpu(tmp_path: Path) -> None:
    release = write_snapshot(tmp_path / "release", n_users=80, seed=5)
    out = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), str(release), "--home", str(tmp_path / "home"),
         "--epochs", "1", "--threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "no CUDA GPU visible to torch: running on the CPU" in out.stderr
    assert "epoch 1:" in out.stdout
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["device"], summary["sampler"], summary["epochs"]) == ("cpu", "torch", 1)
    assert set(summary["test"]) == set(METHODS)
    assert (tmp_path / "home" / "artifacts" / "evaluate").is_dir()
