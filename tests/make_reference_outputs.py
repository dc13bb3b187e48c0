"""Write the reference outputs that ``test_reference_outputs.py`` compares every model against.

For each case of :func:`cases` (every registered model with its defaults, plus the options that take
another code path, all at small widths), a model is built with ``torch.manual_seed(0)`` on
:func:`fakes.tiny_schema`, and its weights, one fixed batch of inputs and its outputs on that batch (eval
and train mode: dropout is 0 by default, so they differ only where a model behaves differently in
training) are written to one safetensors file. The file in ``tests/data/`` was written by the code
before the speed work of issue 14 (commit d9df2a7), so the test pins the maths through every later optimisation::

    git worktree add --detach /tmp/mtrec-d9df2a7 d9df2a7
    PYTHONPATH=/tmp/mtrec-d9df2a7/src:tests .venv/bin/python tests/make_reference_outputs.py \\
        --out tests/data/reference_outputs.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from fakes import tiny_dataset
from mtrec.data.batches import gather_batch
from mtrec.models import create_model, list_models, model_options

ROWS = 40  # rows of the reference batch
OPTION_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "dcrnn-none": ("dcrnn", {"sharing": "none"}),
    "dcrnn-rank-norm": ("dcrnn", {"rank": 8, "task_norm": True, "shared_steps": 1, "task_steps": 2}),
    "dcrnn-fields": ("dcrnn", {"cross_axis": "fields"}),
    "dtrn-ple": ("dtrn", {"backbone": "ple"}),
    "dtrn-no-tim-bit": ("dtrn", {"use_tim": False, "trm": "bit"}),
    "dtrn-two-layers": ("dtrn", {"num_layers": 2, "use_trm": False}),
    "ple-three-levels": ("ple", {"num_levels": 3, "num_task_experts": 2, "num_shared_experts": 1}),
}


SMALL = {"embedding_dim": 8, "ffn_dim": 16, "field_rnn_dim": 8}  # widths that keep the file small


def small(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` over the model's defaults with every width shrunk (layer sizes divided by 16, at
    least 4; :data:`SMALL`), so that the stored weights stay small while every layer still exists."""
    defaults = model_options(name)
    shrunk: dict[str, Any] = {k: v for k, v in SMALL.items() if k in defaults}
    for key, value in defaults.items():
        if key.endswith("_sizes"):
            shrunk[key] = [max(4, v // 16) for v in value]
    return {**shrunk, **options}


def cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Case name -> (registered model, options): every model with its defaults, then :data:`OPTION_CASES`,
    all with the small widths of :func:`small`."""
    chosen = {**{name: (name, {}) for name in list_models()}, **OPTION_CASES}
    return {case: (name, small(name, options)) for case, (name, options) in chosen.items()}


def reference_batch():  # type: ignore[no-untyped-def]
    """The fixed input batch (tiny dataset seed 7, its first ROWS rows)."""
    return gather_batch(tiny_dataset(rows=120, seed=7), np.arange(ROWS)).features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    features = reference_batch()
    tensors: dict[str, torch.Tensor] = {"input/sparse": features.sparse, "input/dense": features.dense}
    tensors.update({f"input/seq/{k}": v for k, v in features.sequences.items()})
    meta = {}
    for case, (name, options) in cases().items():
        torch.manual_seed(0)
        model = create_model(name, tiny_dataset(rows=120, seed=7).schema, **options)
        tensors.update({f"{case}/weight/{k}": v.detach().clone() for k, v in model.state_dict().items()})
        for mode in ("eval", "train"):
            model.train(mode == "train")
            with torch.no_grad():
                outputs = model(features)
            tensors.update({f"{case}/{mode}/{k}": v.clone() for k, v in outputs.items()})
        meta[case] = json.dumps({"model": name, "options": options})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out), metadata=meta)
    print(f"wrote {len(meta)} cases to {args.out}")


if __name__ == "__main__":
    main()
