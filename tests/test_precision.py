"""train.precision: the choice per device, refusals, and what a mixed-precision step computes."""

from __future__ import annotations

import pytest
import torch

from mtrec.training import precision
from mtrec.training.config import ConfigError, TrainConfig
from mtrec.training.precision import Precision, PrecisionError, choose_precision

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
