"""What the tests of `--cluster` share besides conftest's `client`: a worker plugin that
kills its worker once, and sending a test module's functions to the workers by value."""

import os
import signal
import sys

import cloudpickle
import distributed


class KillOnce(distributed.WorkerPlugin):
    """Kills its worker process (SIGKILL) as the first task whose key starts with `prefix`
    starts executing anywhere (a marker file says it happened): that task is lost in flight
    and dask must rerun it elsewhere."""

    def __init__(self, marker: str, prefix: str):
        self.marker, self.prefix = marker, prefix

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith(self.prefix):
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)


def by_value(module_name: str) -> None:
    """Pickle the module's functions and classes by value: the workers cannot import it."""
    cloudpickle.register_pickle_by_value(sys.modules[module_name])
