"""Running mtrec in subprocesses for tests: plainly, under torchrun, with a patch applied first, or serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from safetensors.torch import load_file

SRC = Path(__file__).resolve().parents[1] / "src"
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env() -> dict[str, str]:
    """This checkout's sources first on the path, one thread, no inherited launcher variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    return env


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -c code args...`` in a child process."""
    return subprocess.run([sys.executable, "-c", code, *args], env=child_env(), capture_output=True,
                          text=True, timeout=timeout)


def torchrun(nproc: int, *command: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node N command...`` (a script and its arguments, or ``-m``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *command]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)


def torchrun_train(nproc: int, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node N -m mtrec.cli train args...`` (gloo on loopback)."""
    return torchrun(nproc, "-m", "mtrec.cli", "train", *args, timeout=timeout)


def max_weight_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between two safetensors state dicts with the same keys."""
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    return max(float(np.abs(wa[k].numpy() - wb[k].numpy()).max()) for k in wa)


@contextmanager
def serve_process(run_dir: Path, *args: str, timeout: float = 120) -> Iterator[str]:
    """``mtrec serve RUN_DIR args...`` in a child process on a free loopback port; yields its base URL once
    ``/healthz`` answers, and stops it (SIGTERM) afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mtrec.cli", "serve", str(run_dir), "--port", str(port), *args],
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mtrec serve exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mtrec serve did not answer /healthz in time"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
