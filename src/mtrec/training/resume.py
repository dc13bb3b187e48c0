"""Resume checkpoints: one file with everything needed to continue a run, loaded without pickle.

``resume.safetensors`` in the run directory holds the tensors (model, best-so-far model, optimizer and
weighting-strategy state, RNG states) and, in its safetensors header, one JSON document with the rest
(epoch and step, early-stopping state, history, settings that must not change on resume). Nested state
such as an optimizer's ``state_dict()`` is stored as JSON whose tensors are references (``{"__tensor__":
key}``) into the file, so any state made of dicts, lists, tuples, scalars, strings, tensors and NumPy
arrays round-trips, and reading a checkpoint never runs code.

The file is written atomically (temporary file, fsync, rename): a process killed at any moment leaves
the previous complete checkpoint in place. One file, not a directory, so there is no moment at which a
half-replaced checkpoint could be seen.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from mtrec import collectives
from mtrec.errors import UserError
from mtrec.training.tensorfile import save_tensors

RESUME = "resume.safetensors"
FORMAT = "mtrec-resume/1"
_META_KEY = "mtrec_resume"


class ResumeError(UserError, ValueError):
    """A resume checkpoint that cannot be read, or that does not fit the run being resumed."""


def encode_state(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-able skeleton of ``obj``; its tensors and arrays are moved into ``tensors`` by path."""
    if isinstance(obj, torch.Tensor | np.ndarray):
        key = path or "."
        if key in tensors:
            raise ResumeError(f"two tensors map to the same key {key!r} in a resume checkpoint")
        tensor = obj.detach() if isinstance(obj, torch.Tensor) else torch.from_numpy(np.array(obj))
        tensors[key] = tensor.to("cpu", copy=True).contiguous()  # a copy: safetensors refuses shared memory
        return {"__tensor__" if isinstance(obj, torch.Tensor) else "__ndarray__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, tensors, f"{path}/{k}") for k, v in obj.items()}
        return {"__items__": [[k, encode_state(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return encode_state(obj.item(), tensors, path)
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": str(obj)}  # strict JSON has no NaN or infinity
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise ResumeError(f"cannot store {type(obj).__name__} at {path or '/'} in a resume checkpoint")


def decode_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode_state`."""
    if isinstance(skeleton, list):
        return [decode_state(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if "__ndarray__" in skeleton:
        return tensors[skeleton["__ndarray__"]].numpy()
    if "__float__" in skeleton:
        return float(skeleton["__float__"])
    if "__tuple__" in skeleton:
        return tuple(decode_state(v, tensors) for v in skeleton["__tuple__"])
    if "__items__" in skeleton:
        return {k: decode_state(v, tensors) for k, v in skeleton["__items__"]}
    return {k: decode_state(v, tensors) for k, v in skeleton.items()}


def save_resume(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (see :func:`encode_state`) to ``path`` atomically."""
    tensors: dict[str, torch.Tensor] = {}
    document = {"format": FORMAT, "state": encode_state(state, tensors)}
    metadata = {_META_KEY: json.dumps(document, allow_nan=False)}
    save_tensors(Path(path), tensors, metadata)


def load_resume(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_resume`; a clear :class:`ResumeError` if it is not one."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as exc:
        raise ResumeError(f"{path}: not a readable resume checkpoint ({exc})") from exc
    try:
        document = json.loads(metadata[_META_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{path}: a safetensors file but not an mtrec resume checkpoint ({exc!r})") from exc
    if document.get("format") != FORMAT:
        raise ResumeError(f"{path}: checkpoint format {document.get('format')!r}, expected {FORMAT!r}")
    try:
        state = decode_state(document["state"], tensors)
    except KeyError as exc:
        raise ResumeError(f"{path}: checkpoint refers to a missing tensor {exc}") from exc
    assert isinstance(state, dict)
    return state


def rng_state(device: torch.device) -> dict[str, Any]:
    """RNG states: torch (CPU, and CUDA) per rank, Python and NumPy of this rank (rank 0's is the one
    written). A collective: every rank calls it."""
    state: dict[str, Any] = {
        "torch": collectives.all_gather_equal(torch.get_rng_state().to(device)),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = collectives.all_gather_equal(torch.cuda.get_rng_state(device).to(device))
    return state


def set_rng_state(state: dict[str, Any], device: torch.device, rank: int, world_size: int) -> None:
    """Each rank takes its own saved state (rank 0's when the world size has changed)."""

    def mine(states: list[torch.Tensor]) -> torch.Tensor:
        return states[rank if len(states) == world_size else 0].cpu()

    torch.set_rng_state(mine(state["torch"]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(mine(state["cuda"]), device)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
