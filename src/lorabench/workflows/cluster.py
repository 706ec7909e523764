"""Ray, started once for the commands that fan work out over it (compare --backend ray, sweep --backend ray)."""

from __future__ import annotations

import os


def start_ray(address: str | None = None):
    """Connect to the cluster at `address` (or $RAY_ADDRESS), else start a local Ray with this process's CPUs."""
    import ray  # optional dependency (lorabench[ray])

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return ray.init(address=address, configure_logging=False)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False)
