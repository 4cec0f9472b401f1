"""Which dask cluster `segment --cluster` uses: `parse_cluster` checks the spec (light:
no dask or torch import), `open_client` connects. The run itself: `inference.distributed`."""

import importlib.util
from contextlib import contextmanager
from pathlib import Path

LOCAL = "local:"
INSTALL_HINT = "pip install 'cellvit-cli[distributed]'"

__all__ = ["open_client", "parse_cluster"]


def parse_cluster(spec: str) -> tuple[str, str | int]:
    """('local', N) for 'local:N', ('address', spec) for a scheduler address such as
    'tcp://host:8786', ('file', spec) for a scheduler file (*.json); ValueError otherwise,
    or when dask.distributed is not installed."""
    if importlib.util.find_spec("distributed") is None:
        raise ValueError(f"a cluster needs dask.distributed: {INSTALL_HINT}")
    if spec.startswith(LOCAL):
        count = spec[len(LOCAL):]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{spec!r}: give local:N with N >= 1 worker processes")
        return "local", int(count)
    if "://" in spec:
        return "address", spec
    if spec.endswith(".json"):
        if not Path(spec).is_file():
            raise ValueError(f"{spec}: no such scheduler file")
        return "file", spec
    raise ValueError(f"{spec!r}: give local:N, a scheduler address (tcp://HOST:PORT) or a "
                     f"scheduler file (*.json)")


@contextmanager
def open_client(spec: str):
    """A dask.distributed Client for `spec` (see `parse_cluster`), closed afterwards:
    'local:N' starts a LocalCluster of N single-threaded worker processes (and stops it).
    InputError naming `spec` when its scheduler cannot be reached."""
    from distributed import Client, LocalCluster

    from cellvit_cli.io import InputError

    kind, value = parse_cluster(spec)
    if kind == "local":
        with LocalCluster(n_workers=value, threads_per_worker=1, processes=True) as cluster, \
                Client(cluster) as client:
            yield client
        return
    options = {"address": value} if kind == "address" else {"scheduler_file": value}
    try:
        client = Client(**options)
    except OSError as err:  # unreachable, timed out
        raise InputError(spec, f"cannot reach the dask scheduler: {err}") from err
    with client:
        yield client
