"""Keep a training run in the repository to continue it elsewhere (see training/keep.py).

    python scripts/keep_run.py /work/runs/v2 training_runs/nuclei_fluo_v2
    # later, on any machine: cellvit train <the same arguments> -o training_runs/nuclei_fluo_v2 --resume
"""

import argparse

from cellvit_cli.training.keep import keep_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("dest")
    args = parser.parse_args()
    print(keep_run(args.run_dir, args.dest))


if __name__ == "__main__":
    main()
