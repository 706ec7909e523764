"""Process measurements that compare's records rely on."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from lorabench.core import runtime
from lorabench.core.runtime import autocast_dtype, peak_resident_mb

HELD_MB = 600


def _send_peak(connection) -> None:
    connection.send(peak_resident_mb())
    connection.close()


@pytest.mark.slow
def test_a_spawned_child_reports_its_own_peak_not_its_parents():
    """A child's ru_maxrss starts at its parent's peak on Linux; the peak read here must not."""
    held = bytearray(HELD_MB * 2**20)
    held[::4096] = b"\x01" * len(held[::4096])  # touch every page, so it is resident
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_send_peak, args=(send,))
    child.start()
    send.close()
    child_peak = receive.recv()
    child.join()
    assert peak_resident_mb() >= HELD_MB
    assert 0 < child_peak < HELD_MB / 2


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_a_cpu_trains_in_bf16_only_where_it_is_native_and_always_scores_in_fp32(monkeypatch, native):
    monkeypatch.setattr(runtime, "cpu_runs_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert autocast_dtype("auto", cpu, training=False) is None  # exact scores: exports agree with the run
    assert autocast_dtype("bf16", cpu, training=False) == torch.bfloat16  # asked for: used everywhere
    assert autocast_dtype("fp32", cpu) is None
