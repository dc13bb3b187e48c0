"""train.precision: the choice per device, refusals, and what a mixed-precision step computes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fakes import tiny_dataset
from mtrec.cli import main
from mtrec.data.batches import gather_batch
from mtrec.models import create_model
from mtrec.training import precision
from mtrec.training.build import objective_and_weighting
from mtrec.training.config import ConfigError, RunConfig, TrainConfig
from mtrec.training.precision import Precision, PrecisionError, choose_precision
from mtrec.training.resume import ResumeError
from mtrec.training.run import train_run
from mtrec.training.trainer import LossStep

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


@pytest.fixture
def cpu_with(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU has exactly the given flags."""
    def give(*flags: str) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(["avx2", "fma", *flags]))
    return give


@pytest.fixture
def cuda_with(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CUDA device does (or does not) support bf16."""
    def give(bf16: bool) -> None:
        monkeypatch.setattr(precision, "cuda_bf16", lambda device: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    return give


@pytest.mark.parametrize(("flags", "expected"), [
    (("amx_bf16", "avx512_bf16"), "bf16"),
    (("avx512_bf16",), "bf16"),
    (("amx_bf16",), "bf16"),
    (("avx512f",), "fp32"),
    ((), "fp32"),
])
def test_auto_on_cpu_follows_the_bf16_instructions(cpu_with, flags: tuple[str, ...], expected: str) -> None:
    cpu_with(*flags)
    chosen = choose_precision("auto", CPU)
    assert chosen.name == expected
    assert chosen.reason.startswith("auto: ")
    for flag in precision.CPU_BF16_FLAGS:
        assert (flag in chosen.reason) == (flag in flags or expected == "fp32")


def test_auto_on_cuda_is_bf16_where_supported(cuda_with) -> None:
    cuda_with(bf16=True)
    assert choose_precision("auto", CUDA).name == "bf16"
    cuda_with(bf16=False)
    chosen = choose_precision("auto", CUDA)
    assert chosen.name == "fp32" and "no bf16" in chosen.reason


def test_explicit_settings(cpu_with, cuda_with) -> None:
    cpu_with("avx512_bf16")
    assert choose_precision("fp32", CPU).name == "fp32"
    assert choose_precision("bf16", CPU).name == "bf16"
    cpu_with()  # bf16 is still computed (emulated) on a CPU without the instructions, and the reason says so
    assert "emulated" in choose_precision("bf16", CPU).reason
    cuda_with(bf16=True)
    fp16 = choose_precision("fp16", CUDA)
    assert fp16.name == "fp16" and fp16.device_type == "cuda"
    assert choose_precision("bf16", CUDA).name == "bf16"


@pytest.mark.parametrize(("setting", "device", "message"), [
    ("fp16", CPU, "fp16 needs a CUDA device"),
    ("fp16", torch.device("mps"), "fp16 needs a CUDA device"),
    ("bf16", torch.device("mps"), "bf16 is supported on cuda and cpu"),
])
def test_refusals(setting: str, device: torch.device, message: str) -> None:
    with pytest.raises(PrecisionError, match=message) as error:
        choose_precision(setting, device)
    assert "\n" not in str(error.value)


def test_bf16_refused_on_a_cuda_device_without_it(cuda_with) -> None:
    cuda_with(bf16=False)
    with pytest.raises(PrecisionError, match="Old GPU has no bf16 support"):
        choose_precision("bf16", CUDA)


@pytest.mark.parametrize(("settings", "message"), [
    ({"weighting": "gradnorm"}, "weighting: gradnorm"),
    ({"weighting": "pcgrad"}, "weighting: pcgrad"),
    ({"embedding_sharding": "table_wise", "embedding_optimizer": "sgd"}, "embedding_sharding: table_wise"),
])
def test_fp16_refuses_what_its_scaler_cannot_serve(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=f"train.precision: fp16 cannot be used with train.{message}"):
        TrainConfig.parse({"precision": "fp16", **settings})
    TrainConfig.parse({"precision": "bf16", **settings})  # bf16 needs no scaler


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
def test_only_fp16_has_a_gradient_scaler() -> None:
    assert Precision("fp16", "", "cuda").grad_scaler() is not None
    assert Precision("bf16", "").grad_scaler() is None
    assert Precision("fp32", "").grad_scaler() is None


def test_mixed_outputs_reach_the_objective_in_float32() -> None:
    layer = torch.nn.Linear(8, 1)
    x = torch.randn(4, 8)

    def model(features: torch.Tensor) -> dict[str, torch.Tensor]:
        inner = layer(features)
        return {"logit": inner.squeeze(-1), "inner_dtype": torch.tensor(int(inner.dtype == torch.bfloat16))}

    outputs = Precision("bf16", "").outputs(model, x)  # type: ignore[arg-type]
    assert outputs["inner_dtype"].item() == 1  # the layer computed in bf16
    assert outputs["logit"].dtype == torch.float32
    assert layer.weight.dtype == torch.float32  # master weights untouched
    exact = Precision("fp32", "").outputs(model, x)  # type: ignore[arg-type]
    assert exact["inner_dtype"].item() == 0
    torch.testing.assert_close(outputs["logit"], exact["logit"], atol=0.05, rtol=0.05)


# ---- training in bf16 -----------------------------------------------------------------------------
def tiny_run(data_dir: Path, **train: Any) -> RunConfig:
    return RunConfig.from_dict({
        "model": "mmoe", "data": str(data_dir), "model_options": {"expert_sizes": [16], "tower_sizes": [8]},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.01, "num_threads": 1, "prefetch": 0, **train}})


def test_a_bf16_step_trains_and_keeps_float32_weights_and_optimizer_state() -> None:
    data = tiny_dataset(rows=240, seed=2)
    torch.manual_seed(0)
    model = create_model("mmoe", data.schema, expert_sizes=[16], tower_sizes=[8])
    objective, weighting = objective_and_weighting(model, TrainConfig())
    step = LossStep(model, objective, weighting, choose_precision("bf16", CPU))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = gather_batch(data, data.splits["train"][:64])
    losses = []
    for _ in range(20):
        loss, terms = step(batch)
        assert loss.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(s.dtype == torch.float32 for state in optimizer.state.values() for s in state.values()
               if isinstance(s, torch.Tensor) and s.dim() > 0)


def test_metrics_record_the_precision_and_why(tmp_path: Path, cpu_with) -> None:
    tiny_dataset(rows=240, seed=2).save(tmp_path / "data")
    cpu_with()  # no bf16 instructions: auto trains in fp32
    logs: list[str] = []
    metrics = train_run(tiny_run(tmp_path / "data"), tmp_path / "auto", log=logs.append)
    assert metrics["precision"] == "fp32" and "no bf16 instructions" in metrics["precision_reason"]
    assert any(line.startswith("precision: fp32 (auto: ") for line in logs)
    train_run(tiny_run(tmp_path / "data", precision="bf16", select="per_task", epochs=2), tmp_path / "bf16",
              log=lambda _: None)
    written = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert written["precision"] == "bf16" and written["precision_reason"].startswith("train.precision: bf16")
    assert written["select"] == "per_task" and set(written["best_epochs"]) == set(written["tasks"])


def test_resume_keeps_the_precision_auto_chose(tmp_path: Path, cpu_with) -> None:
    """A run started by auto in bf16 does not silently continue in fp32 on a CPU without bf16."""
    tiny_dataset(rows=240, seed=2).save(tmp_path / "data")
    cpu_with("avx512_bf16")
    train_run(tiny_run(tmp_path / "data"), tmp_path / "run", log=lambda _: None)
    cpu_with()
    with pytest.raises(ResumeError, match="trained in bf16, this run would compute in fp32"):
        train_run(tiny_run(tmp_path / "data", epochs=2), tmp_path / "run", log=lambda _: None, resume=True)
    with pytest.raises(ResumeError, match=r"train\.precision: 'auto' -> 'fp32'"):
        train_run(tiny_run(tmp_path / "data", epochs=2, precision="fp32"), tmp_path / "run", log=lambda _: None,
                  resume=True)
    cpu_with("amx_bf16")  # auto picks bf16 again: the run continues
    more = train_run(tiny_run(tmp_path / "data", epochs=2), tmp_path / "run", log=lambda _: None, resume=True)
    assert more["epochs_run"] == 2 and more["precision"] == "bf16"


def test_the_cli_refuses_fp16_on_cpu_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "mmoe", "--data", "synthetic:easy:500", "--epochs", "1", "--precision", "fp16",
              "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.strip().count("\n") == 0 and "fp16 needs a CUDA device" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static-shapes"])
def test_bf16_gives_dtrns_hypernetwork_the_gradients_fp32_gives(static: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """DTRN's per-(task, behaviour) LayerNorm parameters come from its hypernetwork in bf16 under autocast and
    serve thousands of history positions each: their gradients must be summed in float32, not accumulated
    row by row in bf16 (which lost half their size), eager and as traced or compiled (static shapes)."""
    from mtrec.data.source import load_data
    from mtrec.nn import sequence

    monkeypatch.setattr(sequence, "static_shapes", lambda: static)

    data = load_data("synthetic:conflict:3000")
    batch = gather_batch(data, data.splits["train"][:1024])
    torch.manual_seed(0)
    model = create_model("dtrn", data.schema)
    grads = {}
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch.features)
        sum(logit.float().square().mean() for logit in logits.values()).backward()
        grads[bf16] = {name: p.grad.clone() for name, p in model.named_parameters()
                       if name.startswith("tim.hyper.") and p.grad is not None}
    assert grads[False], "the hypernetwork got no gradient"
    for name, exact in grads[False].items():
        assert torch.linalg.norm(grads[True][name] - exact) < 0.05 * torch.linalg.norm(exact), name
