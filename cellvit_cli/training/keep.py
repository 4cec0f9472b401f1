"""A training run kept in the repository, to be continued on another machine with `--resume`.

`keep_run` copies a run folder's small files, its best `weights.pt` in float16 (as the
shipped models keep theirs) and a compact `checkpoint.pt`: weights and buffers in
float16, the optimizer's moments in bfloat16 (Adam's second moments go far below
float16's range), integers as they are: about half the size. `--resume` loads it as
is: `load_state_dict` casts the weights back into the float32 model and torch's optimizer
casts its state to the parameters' dtype.
"""

import shutil
from pathlib import Path

import torch

from cellvit_cli.io import atomic_path
from cellvit_cli.modeling.folder import WEIGHTS_FILE, read_state
from cellvit_cli.training.loop import CHECKPOINT_FILE, LOG_FILE

KEPT_FILES = ("config.json", "thresholds.json", "README.md", "train_config.json",
              "train_summary.json", LOG_FILE, "training_curves.png")


def _cast(value, dtype: torch.dtype):
    """Floating tensors in `value` (nested dicts and lists) cast to `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.ndim > 0 else value
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def compact_checkpoint(payload: dict) -> dict:
    """A checkpoint with its model in float16 and its optimizer state in bfloat16."""
    optimizer = dict(payload["optimizer"])
    optimizer["state"] = _cast(optimizer["state"], torch.bfloat16)
    return {**payload, "model": _cast(payload["model"], torch.float16), "optimizer": optimizer}


def keep_run(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy the run in `run_dir` into `dest` (created) with a compact checkpoint; returns
    `dest`. Files a run has not written yet (thresholds, card) are skipped."""
    run_dir, dest = Path(run_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEPT_FILES:
        if (run_dir / name).is_file():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(run_dir / name, tmp)
    compacted = {WEIGHTS_FILE: _cast(read_state(run_dir / WEIGHTS_FILE), torch.float16),
                 CHECKPOINT_FILE: compact_checkpoint(read_state(run_dir / CHECKPOINT_FILE))}
    for name, payload in compacted.items():
        with atomic_path(dest / name) as tmp:
            torch.save(payload, tmp)
    return dest
