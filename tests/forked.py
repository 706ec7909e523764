"""`python -m lorabench.cli ...` and `python -c SCRIPT ...` as fresh processes forked from one that imported the
training stack once: the forkserver `compare` itself trains members in (workflows.compare.PRELOADED). Each is a
process of its own (its pid takes signals, it dies alone, its exit status is a subprocess's), without importing
torch, transformers and peft again (about 5 s of CPU per process on 2 cores).

Not for what a fork cannot stand for: the installed entry point (test_bad_input, test_cli), a process's peak
memory (test_plan) and torchrun's workers (test_distributed, test_resume)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import tempfile
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
