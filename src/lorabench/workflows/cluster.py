"""Ray, started once for the commands that fan work out over it (compare, sweep and predict with --backend ray)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def start_ray(address: str | None = None) -> None:
    """Connect to the cluster at `address` (or $RAY_ADDRESS), else start a local Ray with this process's CPUs."""
    import ray  # optional dependency (lorabench[ray])

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, configure_logging=False)
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False)


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Ray for the length of a command. A Ray this process already started (a notebook's, a test session's) is
    used as it is and left running; otherwise one is started (`start_ray`) and stopped at the end."""
    import ray  # optional dependency (lorabench[ray])

    if ray.is_initialized():
        yield
        return
    start_ray(address)
    try:
        yield
    finally:
        ray.shutdown()
