"""What the shared blocks mix, recorded when asked: gate weights, field weights, cross-step gates.

A block that mixes something (a softmax gate over experts, a SENet's field weights, a Cross-RNN step's
update gate, a hypernetwork's LayerNorm parameters) derives from :class:`RecordingBlock` and calls
:meth:`RecordingBlock.record` with what it computed. Outside a :func:`recording` context the call is one
attribute test and returns at once, so training, ``torch.compile`` and ONNX export see no recording;
inside it, every record is kept (detached) in call order with the block's module path, so a reader
(``mtrec inspect``) learns what a model mixes without knowing its class::

    with recording(model) as records:
        model(features)
    for r in records.records:  # r.block: "gates", r.kind: EXPERT_WEIGHTS, r.values: [G, B, E]
        ...

Record kinds and their tensors (``n`` parallel units: one per task, per gate or per group):

- :data:`EXPERT_WEIGHTS` ``[G, B, E]``: each gate's softmax weights over its experts (sum 1 over E).
- :data:`FIELD_WEIGHTS` ``[n, B, F, 1]`` or ``[n, B, F, d]``: each unit's weight of each field.
- :data:`ELEMENT_GATES` ``[n, B, D]``: element-wise gates in ``(0, scale)``.
- :data:`CROSS_GATE` and :data:`CROSS_STATE` ``[n, B, D]``: a Cross-RNN step's update gate and new state,
  one record per step in the order the steps run.
- :data:`NORM_SCALE`, :data:`NORM_SHIFT` ``[K, M, N, d]``: LayerNorm scales and shifts per (task,
  behaviour) pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

EXPERT_WEIGHTS = "expert_weights"
FIELD_WEIGHTS = "field_weights"
ELEMENT_GATES = "element_gates"
CROSS_GATE = "cross_gate"
CROSS_STATE = "cross_state"
NORM_SCALE = "norm_scale"
NORM_SHIFT = "norm_shift"


@dataclass(frozen=True)
class Record:
    """One recorded tensor: the recording block's module path in the model, its kind, its values."""

    block: str
    kind: str
    values: torch.Tensor


@dataclass
class Recording:
    """The records of the forward passes run inside one :func:`recording` context, in call order."""

    records: list[Record] = field(default_factory=list)

    def last(self) -> dict[str, torch.Tensor]:
        """``{"block/kind": values}``, the last record of each block and kind."""
        return {f"{r.block}/{r.kind}": r.values for r in self.records}

    def clear(self) -> None:
        self.records.clear()


class RecordingBlock(nn.Module):
    """A module that can record what it mixes (see the module docstring). Recording is off by default."""

    _recording: Recording | None = None  # set on the instance by recording() only
    _record_path: str = ""

    def record(self, kind: str, values: torch.Tensor) -> None:
        """Keep ``values`` (detached) under this block's path when recording is on; nothing otherwise."""
        if self._recording is not None:
            self._recording.records.append(Record(self._record_path, kind, values.detach()))


@contextmanager
def recording(model: nn.Module) -> Iterator[Recording]:
    """Switch recording on for every :class:`RecordingBlock` in ``model`` and collect their records;
    recording is off again when the context ends, even after an error."""
    collected = Recording()
    blocks = [(path, m) for path, m in model.named_modules() if isinstance(m, RecordingBlock)]
    for path, block in blocks:
        block._recording, block._record_path = collected, path
    try:
        yield collected
    finally:
        for _, block in blocks:
            del block._recording, block._record_path
