"""fla's Gated DeltaNet kernels as composer calls them, on the CPU: tests/fla_interpret.py runs
`GatedDeltaNet._forward_kernels` through Triton's interpreter (NumPy) against `_forward_torch`.

What it checks is composer's call convention (raw gates and beta's sigmoid inside the kernel, q/k norms
inside it, the value-major state transposed at the boundary, fla's causal_conv1d on (B, T, C)) and the
gradients through fla's Triton backward, in fp32 with no GPU. Measured on the CPU machine (2026-12-05,
triton 3.9.0, fla-core 0.6.0): every relative error below 2e-6; passing `state_v_first=False` instead
gives 0.9-1.3, and dropping the sigmoid from the kernel makes fla refuse the call. Tolerance 1e-4 relative
to the reference's largest value. GPU numerics (TF32 in tl.dot, bf16) and fla's tilelang backward, which
the H200 runs, are tests/gpu/test_gdn_parity.py's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


def test_fla_kernels_as_composer_calls_them_match_the_torch_path():
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "tests.fla_interpret"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(cases) == 2
    for case in cases:
        errors = {"forward": case["forward"], "prefill": case["prefill"], "prefill_state": case["prefill_state"],
                  "decode_vs_full_forward": case["decode_vs_full_forward"],
                  **{f"grad {name}": err for name, err in case["gradients"].items()}}
        assert set(case["gradients"]) >= {"input", "A_log", "dt_bias", "in_proj.weight", "conv1d.weight"}
        assert max(errors.values()) < TOL, (case["settings"], {k: v for k, v in errors.items() if v >= TOL})
