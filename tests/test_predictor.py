"""Batched prediction: device choice, out-of-memory retry, lazy streaming, the real model."""

import logging

import numpy as np
import pytest
import torch

from cellvit_cli.device import autocast, is_out_of_memory, resolve_device
from cellvit_cli.inference.predictor import DenseNetwork, Predictor
from cellvit_cli.modeling import ModelConfig
from test_tiling import SplitNetwork


class OutOfMemoryAbove(SplitNetwork):
    """Identity network that runs out of memory on batches larger than `limit`."""

    def __init__(self, limit: int):
        super().__init__({"star": 1}, size_multiple=8)
        self.limit, self.batches = limit, []

    def forward(self, x):
        self.batches.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device("CPU") == torch.device("cpu")
    for bad in ("bogus", "cuda:99" if torch.cuda.is_available() else "cuda"):
        with pytest.raises(ValueError):
            resolve_device(bad)


def test_autocast_only_on_cuda():
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_out_of_memory_halves_the_batch_and_warns(caplog):
    network = OutOfMemoryAbove(limit=2)
    predictor = Predictor(network, batch_size=8, tile_size=32, overlap=8)
    image = np.random.default_rng(0).normal(size=(1, 100, 100)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="cellvit_cli"):
        maps = predictor.predict(image)
    np.testing.assert_allclose(maps["star"], image, rtol=1e-6, atol=1e-6)
    assert predictor.batch_size == 2 and network.batches[:3] == [8, 4, 2]
    assert [r.getMessage() for r in caplog.records] == [
        "out of memory on cpu: retrying with batch size 4",
        "out of memory on cpu: retrying with batch size 2"]
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))


def test_other_errors_are_not_retried():
    class Broken(SplitNetwork):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    predictor = Predictor(Broken({"star": 1}), batch_size=4, tile_size=32, overlap=8)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        predictor.predict(np.zeros((1, 40, 40), np.float32))


def test_stream_reads_images_only_as_batches_need_them():
    pulled = []

    def images():
        for i in range(6):
            pulled.append(i)
            yield i, np.full((1, 32, 32), float(i), np.float32)  # one tile each

    predictor = Predictor(SplitNetwork({"star": 1}), batch_size=2, tile_size=32, overlap=8)
    stream = predictor.predict_stream(images())
    key, maps = next(stream)
    assert key == 0 and (maps["star"] == 0).all() and pulled == [0, 1]
    assert [k for k, _ in stream] == [1, 2, 3, 4, 5]


def test_tile_size_rounds_down_to_the_size_multiple():
    predictor = Predictor(SplitNetwork({"star": 1}, size_multiple=16), tile_size=100, overlap=8)
    assert predictor.tile_size == 96
    with pytest.raises(ValueError):
        Predictor(SplitNetwork({"star": 1}, size_multiple=16), tile_size=8)


def test_dense_network_on_the_real_model():
    model = ModelConfig(variant="vit_tiny_p16", heads=("star", "flow", "boundary"),
                        n_rays=8).build().eval()
    network = DenseNetwork(model, ("star", "boundary"))
    predictor = Predictor(network, batch_size=2, tile_size=64, overlap=16)
    maps = predictor.predict(np.random.default_rng(0).random((1, 70, 90), dtype=np.float32))
    assert set(maps) == {"star", "boundary"}
    assert maps["star"].shape == (9, 70, 90) and maps["boundary"].shape == (2, 70, 90)
    assert 0 <= maps["star"][0].min() and maps["star"][0].max() <= 1
    assert maps["star"][1:].min() >= 0
    with pytest.raises(ValueError, match="no head"):
        DenseNetwork(ModelConfig(variant="vit_tiny_p16", heads=("star",)).build(), ("flow",))


@pytest.mark.gpu
def test_cuda_autocast_matches_cpu():
    torch.manual_seed(0)
    model = ModelConfig(variant="vit_tiny_p16", heads=("star",), n_rays=8).build().eval()
    image = np.random.default_rng(0).random((1, 200, 150), dtype=np.float32)
    cpu = Predictor(DenseNetwork(model, ("star",)), tile_size=128, overlap=32).predict(image)
    gpu_model = DenseNetwork(model.to("cuda"), ("star",))
    gpu = Predictor(gpu_model, device="cuda", tile_size=128, overlap=32).predict(image)
    assert gpu["star"].dtype == np.float32
    np.testing.assert_allclose(gpu["star"][0], cpu["star"][0], atol=0.05)


def test_validation_gets_the_predictor_without_the_file_pipeline():
    """Training's validation imports the Predictor, not exports and block mode."""
    import subprocess
    import sys

    heavy = {"cellvit_cli.inference.pipeline", "cellvit_cli.export",
             "cellvit_cli.inference.block_pipeline"}
    code = (f"import sys, cellvit_cli.training.validate; "
            f"print('loaded', *sorted(set({sorted(heavy)!r}) & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == ["loaded"], done.stderr
