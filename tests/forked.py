"""`python -m lorabench.cli ...` and `python -c SCRIPT ...` as fresh processes forked from one that imported the
training stack once: the forkserver `compare` itself trains members in (workflows.compare.PRELOADED). Each is a
process of its own (its pid takes signals, it dies alone, its exit status is a subprocess's), without importing
torch, transformers and peft again (about 5 s of CPU per process on 2 cores).

`launch` starts a command as torchrun's workers would run it (its process-group variables, the others stopped when
one fails) in such processes. Not for what a fork cannot stand for: the installed entry point (test_bad_input,
test_cli), a process's peak memory (test_plan), torchrun itself and a worker's interpreter shutdown
(test_distributed keeps a real torchrun launch for both)."""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lorabench.workflows.compare import fresh_process_context


def _child(command: list[str], env: dict, cwd: str, stdout: str, stderr: str) -> None:
    """Runs in the forked process: the caller's directory, environment and thread count, output to files, then the
    command line as Python would run it."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    if "OMP_NUM_THREADS" in env:  # torch read it when the forkserver imported it
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    flag, target, *args = command[1:]
    if flag == "-m":
        sys.argv = [target, *args]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif flag == "-c":
        sys.argv = ["-c", *args]
        exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    else:
        raise ValueError(f"forked runs python -m or -c command lines, not {command[:2]}")


class Forked:
    """The running process, answering as much of subprocess.Popen as the tests use."""

    def __init__(self, command: list[str], env: dict | None = None):
        context = fresh_process_context()
        self._files = tempfile.TemporaryDirectory(prefix="forked-")
        self._out, self._err = (str(Path(self._files.name) / name) for name in ("stdout", "stderr"))
        child_env = dict(os.environ if env is None else env)
        self._process = context.Process(target=_child, args=(command, child_env, os.getcwd(), self._out, self._err))
        self._process.start()
        self.args, self.pid = command, self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return Path(self._out).read_text(errors="replace"), Path(self._err).read_text(errors="replace")

    def send_signal(self, signal_number: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signal_number)

    def kill(self) -> None:
        self._process.kill()


def run(command: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """subprocess.run(command, capture_output=True, text=True) in a forked process."""
    process = Forked(command, env)
    try:
        stdout, stderr = process.communicate(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def launch(
    command: list[str], env: dict | None = None, processes: int = 2, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node PROCESSES --no-python COMMAND` in forked processes: each gets the
    variables torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT), and when one fails the others are
    killed, as torchrun's agent does, rather than left waiting in a collective. Exit status: the first failure's,
    else 0; output: every rank's, in rank order."""
    with socket.socket() as probe:  # a free port for rank 0's store, as --standalone picks one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shared = {"WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(port)}  # fmt: skip
    ranks = [
        Forked(command, {**(os.environ if env is None else env), **shared, "RANK": str(rank), "LOCAL_RANK": str(rank)})
        for rank in range(processes)
    ]
    deadline = time.monotonic() + timeout
    while (failed := next((rank for rank in ranks if rank.poll()), None)) is None:
        if all(rank.poll() == 0 for rank in ranks):
            break
        if time.monotonic() > deadline:
            for rank in ranks:
                rank.kill()
            raise subprocess.TimeoutExpired(command, timeout)
        time.sleep(0.05)
    for rank in ranks:
        rank.kill()  # the others of a failed launch (a finished process is left alone)
    outputs = [rank.communicate() for rank in ranks]
    return subprocess.CompletedProcess(
        command,
        failed.returncode if failed else 0,
        "".join(out for out, _ in outputs),
        "".join(err for _, err in outputs),
    )
