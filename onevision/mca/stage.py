"""Stage ``mca``: train the multi-stage cascade (the baseline OneVision is compared with) and save it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from onevision.config import Config
from onevision.evaluation.cost import limit_threads
from onevision.mca.train import MCA_DIR, train_cascade
from onevision.stages import Stage

log = logging.getLogger(__name__)

STAGES = (
    Stage("mca", "onevision.mca.stage:mca", reads=("data", "mca"),
          deps=("data/validated", "data/splits", "models/encoder", "data/embeddings"), outs=("models/mca",),
          doc="train the cascade: ANN recall -> pre-ranker -> ranker"),
)


def mca(cfg: Config, root: Path) -> dict[str, Any]:
    """Stage ``mca``: train the cascade and save it to models/mca/."""

    t0 = time.perf_counter()
    with limit_threads(cfg.mca.threads):
        cascade, facts = train_cascade(cfg, root)
    cascade.save(root / MCA_DIR, extra={"seed": cfg.seed, "config": cfg.section("mca")})
    facts["seconds"] = time.perf_counter() - t0
    log.info("mca: %s items in %s; ranker %d iterations; val HR@10 %.3f (recall order %.3f) (saved to %s)", facts["n_items"],
             facts["index"], facts["ranker_iterations"], facts.get("val_hr@10_mca", float("nan")),
             facts.get("val_hr@10_recall", float("nan")), root / MCA_DIR)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in facts.items()}
