"""composer-bench on a GPU (collected only where one is present): the decode step replayed as a CUDA
graph, and figures that do not depend on which model was measured first. Measured against itself, a
model's memory and decode batch equal its Llama reference's (on the H200 the second of two identical
1B models once showed 0.6 GiB more at every context: memory the first one left allocated).
"""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import cli_env

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LLAMA = "*-*-"  # the tiny preset's own Llama layout (2 blocks)


def test_a_model_benched_against_itself_gets_ratios_of_one(tmp_path):
    argv = [sys.executable, "-m", "composer.apps.bench", f"pattern={LLAMA}", "preset=tiny", "bench.contexts=[512,2048]",
            "bench.max_batch=16", "bench.train_seq_len=256", "leaderboard=null", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "bench.json").read_text())
    assert out["device_type"] == "cuda" and out["decode_graph"], out["decode_graph_reason"]
    ratios = out["ratios"]
    assert ratios["train_memory_bytes"] == pytest.approx(1, abs=0.02)
    for context in ("512", "2048"):
        assert ratios["decode_b1_memory_bytes"][context] == pytest.approx(1, abs=0.02), context
        assert ratios["decode_batch"][context] == 1, context
        assert ratios["decode_memory_bytes"][context] == pytest.approx(1, abs=0.02), context
