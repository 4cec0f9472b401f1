"""Network throughput of each model variant on the CPU, and where the time goes (issue 11).

For every variant (random weights: speed does not depend on them), a batch of tiles goes
through the network in `torch.inference_mode`, in fp32 and in bf16 autocast where the CPU
has it natively; the median of `--repeats` timed runs after one warm-up is taken. Prints one
table with Mpx/s (input pixels per second) and the seconds of each part: ViT encoder, conv
stem, U-decoder (with the shared trunk if any), heads (with the upsampling of head-stride-2
variants). The ratios against the first variant are taken in the same run. With
--compile, a second table: the whole network eager and through `torch.compile` (inductor,
weights frozen as constants), the two timed alternately, and the seconds compiling took.

    python benchmarks/network_speed.py --variants vit_tiny_p16 vit_tiny_p16_s2 --tile 512
    python benchmarks/network_speed.py --variants vit_tiny_p16_s2 --batch 1 --tile 464 \
        --repeats 10 --compile
"""

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from cellvit_cli.device import cpu_description, cpu_supports_bf16
from cellvit_cli.modeling import VARIANTS, build_model
from cellvit_cli.registry import HEADS


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def parts(model, x: torch.Tensor) -> dict:
    """Closures running each part of `model` on its own inputs (computed once)."""
    vit = model.encoder(x)
    stem = model.stem(x)
    features = model.trunk(model.decoder(vit, stem))

    def heads():
        raw = {name: head(features) for name, head in model.heads.items()}
        if model.head_stride > 1:
            raw = {n: F.interpolate(r, size=x.shape[-2:], mode="bilinear") for n, r in raw.items()}
        return raw

    return {"encoder": lambda: model.encoder(x), "stem": lambda: model.stem(x),
            "decoder": lambda: model.trunk(model.decoder(vit, stem)), "heads": heads,
            "network": lambda: model(x)}


@contextlib.contextmanager
def inference(dtype):
    """`torch.inference_mode` with CPU autocast to `dtype` (None: fp32, no autocast)."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16,
                                                enabled=dtype is not None):
        yield


def measure(variant: str, x: torch.Tensor, dtype, repeats: int) -> dict:
    """{part: seconds} of one variant at one precision (dtype None: fp32)."""
    model = build_model(variant, HEADS).eval()
    with inference(dtype):
        return {name: timed(fn, repeats) for name, fn in parts(model, x).items()}


def compiled_against_eager(variant: str, x: torch.Tensor, dtype, repeats: int) -> dict:
    """Median seconds of the whole network eager and compiled, timed alternately, and the
    seconds of the first compiled call (compiling)."""
    model = build_model(variant, HEADS).eval()
    with inference(dtype):
        compiled = torch.compile(model, dynamic=False, options={"freezing": True})
        start = time.perf_counter()
        compiled(x)
        compile_seconds = time.perf_counter() - start
        model(x)
        times = {"eager": [], "compiled": []}
        for _ in range(repeats):
            for name, fn in (("eager", model), ("compiled", compiled)):
                start = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - start)
    return {**{k: statistics.median(v) for k, v in times.items()}, "compile": compile_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["vit_tiny_p16", "vit_tiny_p16_shared",
                                                          "vit_tiny_p16_s2",
                                                          "vit_tiny_p16_s2_shared"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile against eager (~20-60 s to compile each)")
    args = parser.parse_args()
    x = torch.randn(args.batch, 1, args.tile, args.tile)
    precisions = {"fp32": None, **({"bf16": torch.bfloat16} if cpu_supports_bf16() else {})}
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; batch {args.batch} x {args.tile}^2")
    print("| variant | precision | Mpx/s | vs first | encoder s | stem s | decoder s | heads s |")
    print("|---|---|---|---|---|---|---|---|")
    first = {}
    for variant in args.variants:
        for name, dtype in precisions.items():
            s = measure(variant, x, dtype, args.repeats)
            mpx = args.batch * args.tile ** 2 / 1e6 / s["network"]
            first.setdefault(name, mpx)
            print(f"| {variant} | {name} | {mpx:.2f} | {mpx / first[name]:.2f}x | "
                  f"{s['encoder']:.3f} | {s['stem']:.3f} | {s['decoder']:.3f} | {s['heads']:.3f} |",
                  flush=True)
    if args.compile:
        print("\n| variant | precision | eager s | compiled s | compiled speed-up | compiling s |")
        print("|---|---|---|---|---|---|")
        for variant in args.variants:
            for name, dtype in precisions.items():
                c = compiled_against_eager(variant, x, dtype, args.repeats)
                print(f"| {variant} | {name} | {c['eager']:.3f} | {c['compiled']:.3f} | "
                      f"{c['eager'] / c['compiled']:.2f}x | {c['compile']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
