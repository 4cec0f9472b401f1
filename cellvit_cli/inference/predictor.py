"""Batched prediction of dense maps over tiles, with the tiles of many images in one batch.

A `Predictor` cuts each image into tiles (`tiling.plan_tiles`), queues the tiles of as many
images as it takes to fill a batch, runs the network on the batch and blends each tile's
maps into its image (`tiling.Stitcher`). An image's maps are handed back as soon as its last
tile is done, so reading the next images and decoding finished ones can run beside the
network (see `pipeline.py`).
"""

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cellvit_cli.device import is_out_of_memory, precision_autocast, resolve_precision
from cellvit_cli.inference.tiling import Slices, Stitcher, pad_to_tiles, plan_tiles

log = logging.getLogger(__name__)

Maps = dict[str, np.ndarray]
Network = Callable[[torch.Tensor], dict[str, torch.Tensor]]


class DenseNetwork(nn.Module):
    """A `CellViT` followed by `modeling.activate`, keeping only `heads`: x -> dense maps."""

    def __init__(self, model: nn.Module, heads: Sequence[str]):
        super().__init__()
        from cellvit_cli.modeling import activate

        missing = set(heads) - set(model.heads)
        if missing:
            raise ValueError(f"the model has no head(s) {sorted(missing)} "
                             f"(it has {', '.join(model.heads)})")
        self.model, self.heads, self._activate = model, tuple(heads), activate

    @property
    def size_multiple(self) -> int:
        return self.model.size_multiple

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.model(x)
        return self._activate({head: raw[head] for head in self.heads})


@dataclass
class _Job:
    """One tile of one image, waiting for the network."""

    image_id: int
    tile: Slices
    data: np.ndarray  # (C, ty, tx) view into the padded image


@dataclass
class _OpenImage:
    key: Any
    shape: tuple[int, int]
    remaining: int
    stitcher: Stitcher | None = None
    tiles_done: int = field(default=0)


class Predictor:
    """Dense maps of whole images from a network that works on tiles.

    network: (B, C, H, W) float32 tensor -> {head: (B, C_head, H, W)} activated maps
    (e.g. `DenseNetwork(model, heads)`); H and W are multiples of `size_multiple`.
    Tiles of `tile_size` overlapping by `overlap` go through the network `batch_size` at a
    time on `device`, under `torch.inference_mode()` and autocast to the dtype of
    `precision`: 'auto', 'fp32' or 'bf16' (see `device.resolve_precision`), or the dtype
    it gives (None: fp32); `dtype` holds it. The maps come back as float32. On a CUDA
    out-of-memory error the batch size is halved (with a warning) and the batch retried.
    `on_tiles(n)` is called after each batch with the number of tiles done.
    """

    def __init__(self, network: Network, *, device: torch.device | str = "cpu",
                 batch_size: int = 8, tile_size: int = 512, overlap: int = 64,
                 size_multiple: int | None = None, precision: str | torch.dtype | None = "auto",
                 on_tiles: Callable[[int], None] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be >= 1")
        self.network = network
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.size_multiple = size_multiple or getattr(network, "size_multiple", 1)
        self.tile_size = tile_size - tile_size % self.size_multiple
        if self.tile_size < self.size_multiple:
            raise ValueError(f"tile size {tile_size} is smaller than the model's size multiple "
                             f"{self.size_multiple}")
        self.overlap = overlap
        self.dtype = (resolve_precision(precision, self.device) if isinstance(precision, str)
                      else precision)
        self.on_tiles = on_tiles
        self.seconds = 0.0  # time spent running the network (incl. transfers)

    def plan(self, shape: tuple[int, int]) -> list[Slices]:
        """The tiles of an image of `shape` (Y, X)."""
        return plan_tiles(shape, self.tile_size, self.overlap, self.size_multiple)

    def predict(self, image: np.ndarray) -> Maps:
        """Dense maps {head: float32 (C_head, Y, X)} of one (C, Y, X) float32 image."""
        for _, maps in self.predict_stream([(None, image)]):
            return maps
        raise AssertionError("unreachable")

    def predict_stream(self, images: Iterable[tuple[Any, np.ndarray]]
                       ) -> Iterator[tuple[Any, Maps]]:
        """Yield (key, maps) for each (key, (C, Y, X) float32 image), in input order.

        Images are pulled from `images` only as needed to fill the next batch, so a lazy
        iterable (a reader running ahead in a thread) keeps memory bounded.
        """
        source = iter(images)
        queue: deque[_Job] = deque()
        open_images: dict[int, _OpenImage] = {}
        finished: dict[int, Maps] = {}
        next_id, next_out, exhausted = 0, 0, False
        while True:
            while not exhausted and len(queue) < self.batch_size:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                self._enqueue(next_id, *item, queue, open_images)
                next_id += 1
            if not queue:
                break
            batch = self._take_batch(queue)
            for job, maps in zip(batch, self._run(np.stack([job.data for job in batch]))):
                image = open_images[job.image_id]
                if image.stitcher is None:
                    channels = {head: m.shape[0] for head, m in maps.items()}
                    image.stitcher = Stitcher(image.shape, channels, self.overlap)
                image.stitcher.add(job.tile, maps)
                image.remaining -= 1
                if image.remaining == 0:
                    finished[job.image_id] = image.stitcher.result()
            if self.on_tiles is not None:
                self.on_tiles(len(batch))
            while next_out in finished:
                yield open_images.pop(next_out).key, finished.pop(next_out)
                next_out += 1

    def _enqueue(self, image_id: int, key: Any, image: np.ndarray, queue: deque,
                 open_images: dict) -> None:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3:
            raise ValueError(f"expected a (C, Y, X) image, got shape {image.shape}")
        tiles = self.plan(image.shape[1:])
        padded = pad_to_tiles(image, tiles)
        open_images[image_id] = _OpenImage(key, image.shape[1:], len(tiles))
        queue.extend(_Job(image_id, tile, padded[(slice(None), *tile)]) for tile in tiles)

    def _take_batch(self, queue: deque) -> list[_Job]:
        """Up to `batch_size` queued tiles of the shape of the first one, oldest first."""
        shape = queue[0].data.shape
        batch, rest = [], deque()
        while queue:
            job = queue.popleft()
            fits = len(batch) < self.batch_size and job.data.shape == shape
            (batch if fits else rest).append(job)
        queue.extend(rest)
        return batch

    def _run(self, batch: np.ndarray) -> list[Maps]:
        """Maps of a (B, C, ty, tx) batch, split in halves after an out-of-memory error."""
        results: list[Maps] = []
        start = 0
        while start < len(batch):
            chunk = batch[start:start + self.batch_size]
            try:
                out = self._forward(chunk)
            except RuntimeError as err:
                if not is_out_of_memory(err) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory on %s: retrying with batch size %d",
                            self.device, self.batch_size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            results.extend({head: m[i] for head, m in out.items()} for i in range(len(chunk)))
            start += len(chunk)
        return results

    @torch.inference_mode()
    def _forward(self, chunk: np.ndarray) -> Maps:
        start = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device)
        with precision_autocast(self.device, self.dtype):
            out = self.network(x)
        maps = {head: t.float().cpu().numpy() for head, t in out.items()}
        self.seconds += time.perf_counter() - start
        return maps
