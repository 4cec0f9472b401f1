"""benchmarks/gpu.sh, the GPU benchmark of issue 11, run on the CPU with a tiny model: it
writes one JSON with a row per batch size and the training figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import save_packed_cells_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_writes_its_json_on_the_cpu(tmp_path):
    model = save_packed_cells_model(tmp_path / "model")
    out = tmp_path / "gpu.json"
    argv = ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out), "--model", str(model),
            "--device", "cpu", "--precision", "fp32", "--n-images", "2", "--size", "256",
            "--batch-sizes", "1,2", "--variant", "vit_nano_p16", "--train-batch", "2",
            "--train-steps", "2", "--workdir", str(tmp_path / "work")]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu" and result["machine"]["untrained"] is False
    assert [row["batch_size"] for row in result["segment"]] == [1, 2]
    for row in result["segment"]:
        assert row["images"] == 2 and row["cells"] > 0 and row["mpx_per_s"] > 0
        assert row["peak_gpu_gib"] is None  # no GPU here
    assert result["train"]["crops_per_s"] > 0 and result["train"]["variant"] == "vit_nano_p16"
