from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    skip_data = pytest.mark.skip(reason=f"needs {SHARED_DATA}")
    import torch

    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "shared_data" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_data)


@pytest.fixture(scope="session")
def nuclei():
    """The stardist sample: image (512, 512) uint16 and labels (512, 512) int32: 125 nuclei (ids up to 183)."""
    from stardist.data import test_image_nuclei_2d

    image, labels = test_image_nuclei_2d(return_mask=True)
    return image, labels.astype(np.int32)


def save_packed_cells_model(folder, heads=("star", "boundary")):
    """Save a ViT-tiny model folder whose star head sees round cells everywhere (prob 0.98,
    rays 6 px), so decoding finds a packed grid of cells without any training. Returns the
    folder. The model's median diameter is 12 px: pass `--diameter 12` for zoom 1."""
    import torch

    from cellvit_cli.modeling import ModelConfig, save_model_folder

    torch.manual_seed(0)
    config = ModelConfig(variant="vit_tiny_p16", heads=tuple(heads), median_diameter=12.0)
    model = config.build()
    last = model.heads["star"].body[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([4.0] + [0.6] * (last.bias.numel() - 1)))
    return save_model_folder(folder, model, config, {"default_mode": "star"})


def exit_code_and_heavy_imports(argv: list[str], modules: set[str]) -> list[str]:
    """Run `cellvit ARGV` in a fresh interpreter; [exit code, *the `modules` it had imported
    by then], as strings: how to check that an error comes before the heavy imports."""
    import subprocess
    import sys

    code = ("import sys; from cellvit_cli.cli import main\n"
            f"try: main({argv!r})\n"
            f"except SystemExit as e: print(e.code, *sorted(set({sorted(modules)!r}) "
            "& set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    return done.stdout.split() or [done.stderr]


@pytest.fixture(scope="session")
def client():
    """A dask Client of a LocalCluster of 2 single-threaded worker processes, for the tests
    of `--cluster` (one cluster for the session; skipped without dask.distributed)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client
