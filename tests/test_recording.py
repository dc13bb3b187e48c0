"""The recording interface of the shared blocks: off by default, what each block records when on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fakes import tiny_dataset
from mtrec.data.batches import gather_batch
from mtrec.models import create_model
from mtrec.nn.recording import (
    CROSS_GATE,
    CROSS_STATE,
    EXPERT_WEIGHTS,
    FIELD_WEIGHTS,
    NORM_SCALE,
    RecordingBlock,
    recording,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def features():  # type: ignore[no-untyped-def]
    data = tiny_dataset(rows=64)
    return data.schema, gather_batch(data, np.arange(32)).features


def kinds(records) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {(r.block, r.kind) for r in records}


def test_mmoe_records_each_tasks_gate_weights_and_stops_after_the_context(features) -> None:  # type: ignore[no-untyped-def]
    schema, batch = features
    torch.manual_seed(0)
    model = create_model("mmoe", schema, num_experts=3)
    with recording(model) as records:
        outputs = model(batch)
    (gate,) = [r for r in records.records if r.kind == EXPERT_WEIGHTS]
    assert gate.values.shape == (2, 32, 3)  # [tasks, B, experts]
    assert torch.allclose(gate.values.sum(-1), torch.ones(2, 32))
    assert not gate.values.requires_grad
    assert set(records.last()) == {f"{gate.block}/{EXPERT_WEIGHTS}"}
    # off again: nothing more is recorded, and the outputs do not depend on recording
    model(batch)
    assert len(records.records) == 1
    assert all("_recording" not in m.__dict__ for m in model.modules())
    for task, value in model(batch).items():
        assert torch.equal(value, outputs[task])


def test_dtrn_records_field_weights_per_task_and_its_norm_parameters(features) -> None:  # type: ignore[no-untyped-def]
    schema, batch = features
    torch.manual_seed(0)
    model = create_model("dtrn_mmoe", schema)
    with recording(model) as records:
        model(batch)
    by_kind = {r.kind: r.values for r in records.records}
    fields = len(schema.feature_names)
    assert by_kind[FIELD_WEIGHTS].shape == (2, 32, fields, 1)
    assert by_kind[NORM_SCALE].shape[:2] == (2, 2)  # [tasks, behaviours, norms, d]
    assert by_kind[EXPERT_WEIGHTS].shape[:2] == (2, 32)


@pytest.mark.parametrize(("sharing", "tracks"), [("partial", 3), ("hard", 1), ("none", 1)])
def test_dcrnn_records_every_cross_step(features, sharing: str, tracks: int) -> None:  # type: ignore[no-untyped-def]
    schema, batch = features
    torch.manual_seed(0)
    model = create_model("dcrnn", schema, sharing=sharing, shared_steps=2, task_steps=1)
    with recording(model) as records:
        model(batch)
    gates = [r for r in records.records if r.kind == CROSS_GATE]
    states = [r for r in records.records if r.kind == CROSS_STATE]
    assert len(gates) == len(states) == (2 + 2 if sharing == "partial" else 3)  # partial: 2 shared + 1 per task
    assert len({r.block for r in gates}) == tracks  # partial: the shared cell and one part per task
    assert all(((g.values > 0) & (g.values < 1)).all() for g in gates)


def test_a_model_without_recording_blocks_records_nothing(features) -> None:  # type: ignore[no-untyped-def]
    schema, batch = features
    model = create_model("shared_bottom", schema)
    assert not any(isinstance(m, RecordingBlock) for m in model.modules())
    with recording(model) as records:
        model(batch)
    assert records.records == []
