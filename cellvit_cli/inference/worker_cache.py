"""What a dask worker process keeps between the tasks of a run (`distributed`,
`distributed_blocks`): the model loaded once (with glibc's allocator tuned back for
tensors, `tune_malloc`), the image file kept open, and the log lines of a task sent back
to the client instead of the worker's stderr."""

import ctypes
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cellvit_cli.inference.segmenter import SegmentSettings, Segmenter

LOCK = threading.Lock()  # one task at a time per process: the engine has its own threads
_SEGMENTERS: dict[tuple[str, str], Segmenter] = {}  # the last model loaded in this process
_REGIONS: dict[tuple, object] = {}  # the last image opened in this process


def cached_segmenter(settings: SegmentSettings, model) -> Segmenter:
    """The Segmenter of (settings, model), loaded once per process and kept for the next
    tasks (only the last one: a new model or settings replace it)."""
    key = (str(model), repr(settings))
    if key not in _SEGMENTERS:
        tune_malloc()
        _SEGMENTERS.clear()
        _SEGMENTERS[key] = Segmenter.from_settings(settings, model)
    return _SEGMENTERS[key]


_MMAP_THRESHOLD, _TRIM_THRESHOLD = -3, -1  # glibc's mallopt parameters
_MALLOC_TUNED = False


def tune_malloc() -> None:
    """Serve large allocations from the heap again in this process (glibc only; once).

    Dask starts its workers with MALLOC_TRIM_THRESHOLD_=65536, which also turns off
    glibc's adaptive mmap threshold: every array above 128 kB becomes a fresh mmap whose
    pages are faulted in again, and the network ran 2.2x slower in a worker than in a plain
    process (a 1536 px block, one thread: 12.9 s against 5.8 s, AMD EPYC). The mmap
    threshold goes to glibc's maximum (32 MiB) and trimming starts above 64 MiB."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_MMAP_THRESHOLD, 32 * 2 ** 20)
        libc.mallopt(_TRIM_THRESHOLD, 64 * 2 ** 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def cached_regions(path, channel: int | None):
    """`bigtiff.open_regions(path, channel)`, kept open for the next tasks of the same
    image (only the last image: another one, or the file changed, closes it)."""
    from cellvit_cli.bigtiff import open_regions

    key = (str(path), channel, os.stat(path).st_mtime_ns)
    if key not in _REGIONS:
        for regions in _REGIONS.values():
            regions.close()
        _REGIONS.clear()
        _REGIONS[key] = open_regions(Path(path), channel)
    return _REGIONS[key]


class _ListHandler(logging.Handler):
    def __init__(self, lines: list):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


@contextmanager
def captured_logs() -> Iterator[list[tuple[int, str]]]:
    """The (level, message) lines that cellvit_cli logs (INFO and up) meanwhile, kept from
    the worker's own stderr: the client logs them."""
    logger = logging.getLogger("cellvit_cli")
    lines: list[tuple[int, str]] = []
    handler = _ListHandler(lines)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
