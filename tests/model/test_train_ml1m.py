"""PinSage on the real ml-1m, through the pipeline's own steps (train, then the evaluate step): the
served history rule beats every baseline on validation (what the quality gate asks) and on test, and
DGL's latest-movie rule beats item-kNN from the same latest movie. Two epochs (the defaults otherwise):
about 5 minutes on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

from recsys_tasks import pipeline
from recsys_tasks.artifacts import read_json
from recsys_tasks.config import Settings
from recsys_tasks.model.evaluate import BASELINES, SERVED
from tests.conftest import real_release


@pytest.mark.slow
def test_ml1m_served_rule_beats_every_baseline(settings: Settings) -> None:
    torch.set_num_threads(2)
    s = settings.replace(snapshot=str(real_release("ml-1m")), skip_checksum=True, epochs=2, sampler="torch",
                          device="cpu")
    metrics = read_json(pipeline.run(s, until="evaluate")["evaluate"].out("metrics.json"))["metrics"]
    for split in ("val", "test"):
        m = metrics[split]
        assert m[SERVED]["users"] == 6040
        for baseline in BASELINES:
            assert m[SERVED]["hr@10"] > m[baseline]["hr@10"], (split, baseline, m)
        assert m["pinsage_latest"]["hr@10"] > m["itemknn"]["hr@10"], (split, m)
