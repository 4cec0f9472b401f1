"""Training speed: crops per second for each model variant (CPU, and CUDA where present).

Measures full training steps (forward, backward, AdamW) on real augmented crops of the
stardist sample nuclei, with the batch for the next step built beside the network, and
the network step alone on random input (the ratio shows what data preparation costs), at
each precision asked for (`cellvit train --precision`: autocast of the steps, fp32
weights and optimizer).

    python benchmarks/train_speed.py [--variants vit_tiny_p16,vit_small_p16] [--steps 10]
    python benchmarks/train_speed.py --variants vit_tiny_p16_s2 --precisions fp32,bf16
"""

import argparse
import itertools
import time

import numpy as np
import torch

from cellvit_cli.device import cpu_description, precision_autocast, precision_name
from cellvit_cli.modeling import VARIANTS, build_model
from cellvit_cli.preprocess import normalize_percentile
from cellvit_cli.registry import HEADS, head_channels
from cellvit_cli.samples import load_nuclei_sample
from cellvit_cli.targets import clean_labels
from cellvit_cli.targets.flow import flow_targets
from cellvit_cli.training.augment import AugmentConfig
from cellvit_cli.training.data import Sample
from cellvit_cli.training.loop import TrainConfig, prefetched_batches, training_dtype
from cellvit_cli.training.losses import total_loss


def sample() -> Sample:
    image, labels = load_nuclei_sample()
    labels = clean_labels(labels)
    return Sample("nuclei", normalize_percentile(image[None]), labels,
                  flow_targets(labels)[1:].astype(np.float16))


def crops_per_second(variant: str, device: torch.device, cfg: TrainConfig, steps: int,
                     data: list[Sample] | None) -> float:
    """Training crops per second at `cfg.precision` (as `cellvit train` runs it on
    `device`); `data` None times the network on random tensors."""
    dtype = training_dtype(cfg.precision, device)
    torch.manual_seed(0)
    model = build_model(variant, cfg.heads).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = cfg.augment.crop_size
    if data is None:
        fixed = (torch.randn(cfg.batch_size, 1, size, size),
                 {h: torch.rand(cfg.batch_size, head_channels(h, cfg.n_rays), size, size)
                  for h in cfg.heads})
        batches = (fixed for _ in range(steps + 2))
    else:
        batches = prefetched_batches(data, cfg, range(steps + 2))
    for i, (images, targets) in enumerate(batches):
        if i == 2:  # two warm-up steps
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with precision_autocast(device, dtype):
            raw = model(images.to(device))
        loss, _ = total_loss({h: r.float() for h, r in raw.items()},
                             {h: t.to(device) for h, t in targets.items()})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "vit_nano_p16"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--precisions", default="auto", help="comma list of auto, fp32, bf16")
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    data = [sample()]
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"CPU threads, heads {HEADS}, batch {args.batch_size}, crops {args.crop_size}^2")
    print(f"{'variant':22} {'device':6} {'precision':9} {'net only':>10} {'with data':>10}"
          "  (crops/s)")
    for variant, device, precision in itertools.product(
            args.variants.split(","), devices, args.precisions.split(",")):
        cfg = TrainConfig(heads=HEADS, batch_size=args.batch_size, precision=precision,
                          augment=AugmentConfig(crop_size=args.crop_size))
        net = crops_per_second(variant, device, cfg, args.steps, None)
        full = crops_per_second(variant, device, cfg, args.steps, data)
        name = precision_name(training_dtype(cfg.precision, device))
        print(f"{variant:22} {device.type:6} {name:9} {net:10.1f} {full:10.1f}", flush=True)


if __name__ == "__main__":
    main()
