"""The bad-input battery of training: tampered resume checkpoints and model files, a full disk, two
processes writing one run directory, a finished run trained over, huge sizes and unavailable devices.

Each case runs through :func:`test_bad_input.check_case`: exit status 2, one ``error:`` line naming what
is wrong and where, no input changed, nothing written outside the case's output.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mtrec.locks import locked_directory
from mtrec.training.resume import RESUME
from test_bad_input import Builder, Case, World, build_world, check_built, check_case, main_status, train_argv

pytestmark = pytest.mark.usefixtures("one_thread")
HOLD_LOCK = """
import sys
from mtrec.locks import locked_directory
with locked_directory(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory)

CASES: dict[str, Builder] = {}


def case(name: str) -> Callable[[Builder], Builder]:
    def add(build: Builder) -> Builder:
        CASES[name] = build
        return build

    return add


def run_copy(t: Path, w: World) -> Path:
    """A copy of the shared finished run (its resume checkpoint included)."""
    shutil.copytree(w.run, t / "run")
    return t / "run"


def resume_argv(run: Path, *extra: str) -> list[str]:
    """Continue ``run`` with the config it was started with."""
    return ["train", "--config", str(run / "config.json"), "--out", str(run), "--resume", *extra]


def edit_safetensors(path: Path, tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
                     metadata: Callable[[dict[str, Any]], None] | None = None, key: str = "mtrec_resume") -> None:
    """Rewrite a safetensors file with its tensors and its JSON metadata document ``key`` edited."""
    with safe_open(str(path), framework="pt") as handle:
        found = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        meta = handle.metadata() or {}
    if tensors is not None:
        tensors(found)
    if metadata is not None:
        document = json.loads(meta[key])
        metadata(document)
        meta[key] = json.dumps(document)
    save_file(found, str(path), metadata=meta or None)


def retype(path: Path, prefix: str = "") -> str:
    """Change one float32 tensor's dtype in the file's header to int32, keeping every byte's place (the
    same size per element); returns the tensor's name."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    name = next(k for k, v in sorted(header.items()) if k.startswith(prefix) and v.get("dtype") == "F32")
    old = f'"{name}":{{"dtype":"F32"'.encode()
    assert raw[8:8 + size].count(old) == 1
    path.write_bytes(raw[:8] + raw[8:8 + size].replace(old, old.replace(b"F32", b"I32")) + raw[8 + size:])
    return name


# ---- a resume checkpoint that must not be continued -------------------------------------------------------
def _poison(prefix: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        name = next(k for k in sorted(tensors) if k.startswith(prefix) and tensors[k].is_floating_point())
        tensors[name] = tensors[name].clone().fill_(float("nan"))

    return edit


for _prefix in ("/model/", "/best/"):
    def _nan_resume(t: Path, w: World, mp: pytest.MonkeyPatch, prefix: str = _prefix) -> Case:
        run = run_copy(t, w)
        edit_safetensors(run / RESUME, tensors=_poison(prefix))
        return Case(resume_argv(run), [str(run / RESUME), "NaN or infinite", prefix.strip("/")], run)

    case(f"resume: NaN in the checkpoint's {_prefix.strip('/')} weights of a finished run")(_nan_resume)


def _progress_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        change(document["state"]["progress"])

    return edit


PROGRESS_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], list[str]]] = {
    "an unknown progress key": (lambda p: p.update(bogus=1), ["progress", "unknown key(s) ['bogus']"]),
    "a missing stopper": (lambda p: p.pop("stopper"), ["progress", "missing key(s) ['stopper']"]),
    "an unknown stopper key": (lambda p: p["stopper"].update(best_ever=1), ["progress.stopper", "best_ever"]),
    "progress a list": (lambda p: p.update(stopper=[1]), ["progress.stopper", "expected a mapping"]),
}

for _name, (_change, _expect) in PROGRESS_EDITS.items():
    def _progress(t: Path, w: World, mp: pytest.MonkeyPatch, change: Callable[[dict[str, Any]], None] = _change,
                  expect: list[str] = _expect) -> Case:
        run = run_copy(t, w)
        edit_safetensors(run / RESUME, metadata=_progress_edit(change))
        return Case(resume_argv(run), [str(run / RESUME), *expect], run)

    case(f"resume: checkpoint metadata with {_name}")(_progress)


@case("resume: a checkpoint weight retyped float32 -> int32")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    run = run_copy(t, w)
    name = retype(run / RESUME, "/model/")
    return Case(resume_argv(run), [str(run / RESUME), "does not fit", name.removeprefix("/model/"), "torch.int32"],
                run)


# ---- a model file that does not fit its model --------------------------------------------------------------
@case("export: model.safetensors with a tensor retyped float32 -> int32")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    run = run_copy(t, w)
    name = retype(run / "model.safetensors")
    return Case(["export", str(run), "--out", str(t / "m.onnx")],
                [str(run / "model.safetensors"), repr(name), "torch.int32", "torch.float32"])


@case("predict: model.safetensors with a tensor retyped float32 -> int32")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    run = run_copy(t, w)
    name = retype(run / "model.safetensors")
    return Case(["predict", str(run), "--input", str(w.scoring), "--out", str(t / "s.csv"), "--backend", "torch"],
                [str(run / "model.safetensors"), repr(name), "torch.int32"])


# ---- the disk ------------------------------------------------------------------------------------------------
@case("train: the disk refuses the checkpoint write")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    import mtrec.training.tensorfile as tensorfile

    real = tensorfile.save_file

    def limited(*args: Any, **kwargs: Any) -> None:
        """The real writer under a 4 KiB file size limit (the write fails as on a full disk)."""
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limit[1]))
        try:
            real(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
            signal.signal(signal.SIGXFSZ, handler)

    mp.setattr(tensorfile, "save_file", limited)
    return Case(train_argv(w.data, t / "run"), ["cannot write", str(t / "run" / RESUME), "File too large"],
                t / "run", absent=["SafetensorError"])


# ---- a finished run ------------------------------------------------------------------------------------------
@case("train: into a finished run without --resume or --overwrite")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    run = run_copy(t, w)
    return Case(["train", "--config", str(run / "config.json"), "--out", str(run)],
                [str(run), "finished run", "--resume", "--overwrite"], run)


# ---- a device this machine lacks (the checks as on a build without CUDA or MPS, whatever this machine has) ----
def no_cuda_or_mps(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(torch.version, "cuda", None)
    mp.setattr(torch.backends.mps, "is_built", lambda: False)


DEVICE_ARGV: dict[str, tuple[Callable[[Path, World], list[str]], list[str]]] = {
    "train --device cuda": (lambda t, w: train_argv(w.data, t / "run", "--device", "cuda"),
                            ["--device: cuda", "no CUDA", "install a PyTorch build with CUDA", "use cpu"]),
    "train --device cuda:7": (lambda t, w: train_argv(w.data, t / "run", "--device", "cuda:7"),
                              ["--device: cuda:7", "no CUDA"]),
    "train --device mps": (lambda t, w: train_argv(w.data, t / "run", "--device", "mps"),
                           ["--device: mps", "no MPS support", "use cpu"]),
    "train --device tpu": (lambda t, w: train_argv(w.data, t / "run", "--device", "tpu"), ["--device", "'tpu'"]),
    "bench --device cuda": (lambda t, w: ["bench", str(t / "bench.yaml"), "--out", str(t / "r"), "--device", "cuda"],
                            ["--device: cuda", "no CUDA"]),
    "demo --device mps": (lambda t, w: ["demo", "--out", str(t / "demo"), "--device", "mps"],
                          ["--device: mps", "no MPS support"]),
}

for _name, (_argv, _expect) in DEVICE_ARGV.items():
    def _device(t: Path, w: World, mp: pytest.MonkeyPatch, argv: Callable[[Path, World], list[str]] = _argv,
                expect: list[str] = _expect) -> Case:
        no_cuda_or_mps(mp)
        (t / "bench.yaml").write_text(f"models: [mmoe]\ndatasets: [{w.data}]\n")
        return Case(argv(t, w), expect)

    case(f"device: {_name}")(_device)

for _value in ("cuda", "cuda:7", "mps"):
    def _train_device(t: Path, w: World, mp: pytest.MonkeyPatch, value: str = _value) -> Case:
        no_cuda_or_mps(mp)
        (t / "run.yaml").write_text(f"model: mmoe\ntrain: {{device: '{value}'}}\n")
        return Case(["train", "--config", str(t / "run.yaml"), "--data", str(w.data), "--out", str(t / "run")],
                    [f"train.device: {value}", "use cpu"])

    case(f"device: train.device {_value}")(_train_device)


@case("device: cuda:7 on a machine with one GPU")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    mp.setattr(torch.version, "cuda", "12.4")
    mp.setattr(torch.cuda, "device_count", lambda: 1)
    return Case(train_argv(w.data, t / "run", "--device", "cuda:7"), ["--device: cuda:7", "1 CUDA device(s)",
                                                                       "cuda:0 to cuda:0"])


# ---- sizes beyond this machine's memory, refused before anything is allocated --------------------------------
HUGE_OPTIONS = {"embedding_dim: 1000000000": "model_options.embedding_dim = 1000000000",
                "expert_sizes: [1000000000]": "model_options.expert_sizes = [1000000000]",
                "num_experts: 1000000": "model_options.num_experts = 1000000"}

for _option, _key in HUGE_OPTIONS.items():
    def _huge(t: Path, w: World, mp: pytest.MonkeyPatch, option: str = _option, key: str = _key) -> Case:
        (t / "run.yaml").write_text(f"model: mmoe\nmodel_options: {{{option}}}\n")
        return Case(["train", "--config", str(t / "run.yaml"), "--data", str(w.data), "--out", str(t / "run")],
                    ["model 'mmoe'", key, "of memory; this machine has"])

    case(f"huge: {_option}")(_huge)


@case("huge: a run directory's schema.json with vocab_size 1e12")
def _(t: Path, w: World, mp: pytest.MonkeyPatch) -> Case:
    run = run_copy(t, w)
    schema = json.loads((run / "schema.json").read_text())
    schema["sparse"][0]["vocab_size"] = 10**12
    (run / "schema.json").write_text(json.dumps(schema))
    name = schema["sparse"][0]["name"]
    return Case(["export", str(run), "--out", str(t / "m.onnx")],
                [str(run), f"feature {name!r} vocab_size = {10**12}", "of memory; this machine has"])


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_of_training_is_one_clear_line_and_loses_nothing(
    name: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    check_built(CASES[name], tmp_path, world, monkeypatch, capfd)


def test_overwrite_replaces_a_finished_run(world: World, tmp_path: Path) -> None:
    run = run_copy(tmp_path, world)
    before = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**before, "seed": 99}))
    assert main_status(["train", "--config", str(run / "config.json"), "--out", str(run), "--overwrite"]) == 0
    assert json.loads((run / "metrics.json").read_text())["seed"] == before["seed"]


# ---- two processes, one run directory --------------------------------------------------------------------------
def test_a_second_train_into_a_run_directory_being_written_is_refused(
    world: World, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        check_case(Case(train_argv(world.data, tmp_path / "run"), [str(tmp_path / "run"), "another mtrec process"],
                        tmp_path / "run"), tmp_path, world, capfd)
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0


def test_a_directory_lock_is_exclusive_and_leaves_nothing(tmp_path: Path) -> None:
    from mtrec.locks import DirectoryLockedError

    with locked_directory(tmp_path / "new", "run directory"):
        with pytest.raises(DirectoryLockedError, match=r"directory .*new is being written"), \
                locked_directory(tmp_path / "new"):
            pass
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()  # created for the lock, still empty: removed
    (tmp_path / "kept").mkdir()
    with locked_directory(tmp_path / "kept"):
        pass
    with locked_directory(tmp_path / "kept"):  # released
        pass
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())
