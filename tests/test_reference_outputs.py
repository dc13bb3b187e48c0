"""Speed work keeps the maths: for the same weights, every model's outputs equal those of the code before
the optimisations of issue 14 (commit d9df2a7) to 1e-5.

``tests/data/reference_outputs.safetensors`` holds, per case, the weights, the outputs on one fixed batch
(eval and train mode) and the case's model and options, all written by that commit's code with
``tests/make_reference_outputs.py`` (its docstring has the command). Here the current code builds the
same model, loads those weights (strictly: the parameter names and shapes are kept, so checkpoints
written before still load) and must give the same outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fakes import tiny_schema
from mtrec.features.inputs import Features
from mtrec.models import create_model, list_models

REFERENCE = Path(__file__).parent / "data" / "reference_outputs.safetensors"
ATOL = 1e-5

with safe_open(str(REFERENCE), framework="pt") as _file:
    _META: dict[str, str] = _file.metadata()
    _TENSORS = {k: _file.get_tensor(k) for k in _file.keys()}  # noqa: SIM118 (safe_open is not a dict)
CASES = sorted(_META)

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_features() -> Features:
    prefix = "input/seq/"
    sequences = {k[len(prefix):]: v for k, v in _TENSORS.items() if k.startswith(prefix)}
    return Features(_TENSORS["input/sparse"], _TENSORS["input/dense"], sequences)


def test_the_reference_covers_every_model_it_was_written_for() -> None:
    named = {json.loads(_META[c])["model"] for c in CASES}
    assert {"mmoe", "ple", "cgc", "dcrnn", "dtrn", "dtrn_mmoe"} <= named
    assert named <= set(list_models())  # no reference model has been unregistered


@pytest.mark.parametrize("case", CASES)
def test_outputs_equal_the_reference_for_the_same_weights(case: str) -> None:
    spec = json.loads(_META[case])
    model = create_model(spec["model"], tiny_schema(), **spec["options"])
    prefix = f"{case}/weight/"
    weights = {k[len(prefix):]: v for k, v in _TENSORS.items() if k.startswith(prefix)}
    model.load_state_dict(weights, strict=True)
    features = reference_features()
    for mode in ("eval", "train"):
        model.train(mode == "train")
        with torch.no_grad():
            outputs = model(features)
        expected = {k.rsplit("/", 1)[1]: v for k, v in _TENSORS.items() if k.startswith(f"{case}/{mode}/")}
        assert sorted(outputs) == sorted(expected), mode
        for task, value in outputs.items():
            torch.testing.assert_close(value, expected[task], rtol=0, atol=ATOL, msg=f"{case} {mode} {task}")
