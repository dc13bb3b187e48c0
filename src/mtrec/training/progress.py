"""Progress within an epoch: a bar on a terminal, a plain line every few seconds elsewhere.

On a terminal, :class:`EpochProgress` shows a tqdm bar counting samples (rate and time left by tqdm) with
the running mean train loss of each task; where output is not a terminal (a log file, a job scheduler), it
logs one line every ``train.progress_seconds`` instead. The running loss is read from the device only
when it is shown, so the step itself needs no host sync.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class EpochProgress:
    """The progress of one epoch of ``total`` samples, ``done`` of them before this session (a resume)."""

    def __init__(self, epoch: int, total: int, done: int, task_names: list[str], every_s: float,
                 log: Callable[[str], None], enabled: bool, interactive: bool | None = None) -> None:
        """``enabled``: show anything (rank 0); ``interactive``: a bar (default: whether stderr is a
        terminal), else a line every ``every_s`` seconds (0: none)."""
        self.epoch, self.total, self.done, self.task_names = epoch, total, done, task_names
        self.every_s, self.log = every_s, log
        interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch}", unit="sample", unit_scale=True,
                        leave=False, dynamic_ncols=True, disable=not (enabled and interactive))
        self.lines = enabled and not interactive and every_s > 0
        self.start = self.last_line = time.monotonic()
        self.session_samples = 0

    def update(self, samples: int, loss_sum: Callable[[], torch.Tensor], steps: int) -> None:
        """``samples`` more trained; ``loss_sum()``: the epoch's task losses summed so far ``[T]``, over
        ``steps`` trained steps (read only when shown)."""
        self.done += samples
        self.session_samples += samples
        now = time.monotonic()
        if not self.bar.disable:
            self.bar.update(samples)
            if now - self.last_line >= self.bar.mininterval:
                self.bar.set_postfix_str(self._losses(loss_sum(), steps), refresh=False)
                self.last_line = now
        elif self.lines and now - self.last_line >= self.every_s:
            self.last_line = now
            rate = self.session_samples / max(now - self.start, 1e-9)
            left = _duration((self.total - self.done) / rate) if rate > 0 else "?"
            self.log(f"epoch {self.epoch}: {self.done:,}/{self.total:,} samples ({100 * self.done / self.total:.0f}%)"
                     f", {rate:,.0f} samples/s, {left} left, train loss {self._losses(loss_sum(), steps)}")

    def _losses(self, loss_sum: torch.Tensor, steps: int) -> str:
        means = (loss_sum / max(steps, 1)).tolist()
        return " ".join(f"{task} {value:.4f}" for task, value in zip(self.task_names, means, strict=True))

    def close(self) -> None:
        self.bar.close()
