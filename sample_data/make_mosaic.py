"""Write a big mosaic of the real nuclei sample, for trying block mode and benchmarks.

    python sample_data/make_mosaic.py OUT/mosaic.tif --size 16384            # 16384 x 16384
    python sample_data/make_mosaic.py OUT/mosaic.tif --size 4096x8192 --seed 1

Writes the image to OUT/mosaic.tif and its labels to OUT/masks/mosaic.tif (so that
`cellvit segment OUT` sees only the image), both tiled (512 x 512), zlib, BigTIFF from
8192 x 8192 on. Streams tile by tile: memory stays small whatever the size.
"""

import argparse
import sys
import time
from pathlib import Path

try:
    from cellvit_cli.samples import write_mosaic_tiffs
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cellvit_cli.samples import write_mosaic_tiffs


def parse_size(text: str) -> tuple[int, int]:
    """'16384' -> (16384, 16384); '4096x8192' -> (4096, 8192) (Y then X)."""
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use N or YxX)") from None
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use N or YxX)")
    return size


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path, help="image path; labels go to masks/ beside it")
    parser.add_argument("--size", type=parse_size, default=(4096, 4096),
                        help="N or YxX pixels (default 4096)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the flips/rotations")
    args = parser.parse_args(argv)
    labels_path = args.output.parent / "masks" / args.output.name
    start = time.perf_counter()
    write_mosaic_tiffs(args.output, labels_path, args.size, seed=args.seed)
    print(f"wrote {args.output} and {labels_path} ({args.size[0]} x {args.size[1]}) "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
