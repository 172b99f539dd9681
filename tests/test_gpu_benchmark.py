"""benchmarks/gpu.py --quick runs on the CPU and prints the JSON the GPU run fills (keys checked, not figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 40-80 s on the 2-core CPU: the longest test of the default run; `-m slow` runs it
def test_gpu_benchmark_quick_prints_every_figure(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "gpu.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    assert set(result) == {"machine", "quick", "throughput", "loss_share", "profile", "deterministic", "end_to_end",
                           "replay", "seconds"}
    assert result["quick"] is True
    cases = {r["case"] for r in result["throughput"]}
    assert any("efficientnet" in c for c in cases) and any("cspdarknet" in c for c in cases) and "mlp@64" in cases
    for row in result["throughput"]:
        for loop in ("library", "hand_foreach", "hand_fused"):
            assert row[loop]["images_per_s"] > 0 and "peak_mib" in row[loop]
        assert row["ratio_vs_foreach"] > 0 and row["ratio_vs_fused"] > 0
    assert {(r["head"], "error" in r) for r in result["loss_share"]} == {("coupled", False), ("decoupled", False)}
    assert all(0 < r["share"] < 1 and r["images_per_s"] > 0 and "marginal_share" in r for r in result["loss_share"])
    assert "cspdarknet@64x2 dec cl" in cases  # the default's head, channels_last
    assert {r["head"] for r in result["profile"]} == {"coupled", "decoupled"}
    for r in result["profile"]:  # on the CPU: ops recorded, none of them a nonzero (a host wait on a GPU)
        assert r["per_step"]["aten_ops"] > 0 and r["per_step"]["nonzero"] == 0, r
    assert all("cost_ratio_on_vs_off" in r and r["applies"] is False for r in result["deterministic"])
    e2e = result["end_to_end"]
    assert e2e["train_exit"] == 0 and e2e["images_per_s_end_to_end"] > 0
    assert set(e2e["split"]["parts_s"]) == {"data_wait", "step", "validation", "checkpoint", "other"}
    assert result["replay"]["identical"] is True
    assert "library" in p.stdout and "replay --verify identical: True" in p.stdout
