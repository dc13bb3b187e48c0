"""DBMTL, Cross-Stitch, SNR, DSelect-k, POSO, APG and HMoE: each model's defining mechanism (the registry
tests in test_models.py cover the contract every model keeps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fakes import tiny_dataset
from mtrec.data.batches import gather_batch
from mtrec.models import create_model
from mtrec.models.apg import GeneratedLinear
from mtrec.models.dselect_k import DSelectGates, smooth_step

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return tiny_dataset(rows=200, seed=5)


def features_of(data, rows: int = 64):  # type: ignore[no-untyped-def]
    return gather_batch(data, np.arange(rows)).features


def grad_or_zero(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad


def gradients_of_task(model, features, task: str) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    model.zero_grad()
    model(features)[task].sum().backward()
    return {n: grad_or_zero(p).clone() for n, p in model.named_parameters()}


# ---- DBMTL -------------------------------------------------------------------------------------------
def test_dbmtl_conditions_each_task_on_the_tasks_before_it_only(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model("dbmtl", data.schema, embedding_dim=4, bottom_sizes=(16,), task_sizes=(8,),
                         relation_sizes=(16,))
    features = features_of(data)
    click = gradients_of_task(model, features, "click")
    assert all(g.abs().max() == 0 for n, g in click.items() if n.startswith("relations.1."))
    conversion = gradients_of_task(model, features, "conversion")  # p(conversion | click, x)
    assert all(g.abs().max() > 0 for n, g in conversion.items() if n.startswith("relations.0."))
    assert model.relations[1][0].in_features == 8 + 16  # its own h_k and click's r_k


# ---- Cross-Stitch ------------------------------------------------------------------------------------
def test_cross_stitch_units_decide_how_much_the_task_columns_share(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model("cross_stitch", data.schema, embedding_dim=4, hidden_sizes=(8, 4))
    features = features_of(data)
    torch.testing.assert_close(model.stitches[0], torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    shared = gradients_of_task(model, features, "click")
    assert all(layer.weight.grad[1].abs().max() > 0 for layer in model.columns)  # mixed: both columns learn
    with torch.no_grad():
        model.stitches.copy_(torch.eye(2).repeat(2, 1, 1))  # alpha = I: independent columns
    apart = gradients_of_task(model, features, "click")
    assert all(apart[f"columns.{i}.weight"][1].abs().max() == 0 for i in range(2))
    assert apart["stitches"].abs().max() > 0 and shared["stitches"].abs().max() > 0  # alpha still learns


# ---- SNR ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["snr_trans", "snr_aver"])
def test_snr_coding_variables_close_connections_exactly(name: str, data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model(name, data.schema, embedding_dim=4, num_subnetworks=3, subnetwork_sizes=(8,),
                         tower_sizes=(4,))
    features = features_of(data)
    with torch.no_grad():
        model.gates.log_alpha[0, 0, 1] = -10.0  # click's connection from sub-network 1: closed
    model.eval()
    z = model.gates(torch.zeros(5, 1))  # [T, B, n]
    assert torch.all(z[0, :, 1] == 0)
    torch.testing.assert_close(z[0, :, [0, 2]], torch.full((5, 2), 0.5))  # log alpha 0: 0.5 (zeta - gamma) + gamma
    torch.testing.assert_close(z[1], torch.full((5, 3), 0.5))
    weight = gradients_of_task(model, features, "click")["subnetworks.layers.0.weight"]  # [n, in, H]
    assert weight[1].abs().max() == 0 and weight[0].abs().max() > 0 and weight[2].abs().max() > 0
    model.train()
    sampled = model.gates(torch.zeros(4096, 1))
    assert sampled.min() == 0 and sampled.max() == 1  # the stretched, clamped gate hits both ends
    assert bool(((sampled > 0) & (sampled < 1)).any())
    assert (model.transforms is None) == (name == "snr_aver")


# ---- DSelect-k ---------------------------------------------------------------------------------------
def test_dselect_smooth_step_is_exactly_binary_outside_its_interval() -> None:
    t = torch.tensor([-2.0, -0.5, -0.25, 0.0, 0.25, 0.5, 2.0])
    s = smooth_step(t, gamma=1.0)
    torch.testing.assert_close(s[[0, 1, 3, 5, 6]], torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert 0 < s[2] < 0.5 < s[4] < 1 and torch.all(s.diff() >= 0)
    x = torch.tensor([-0.5, 0.5], requires_grad=True)  # continuously differentiable: slope 0 at both ends
    smooth_step(x, 1.0).sum().backward()
    torch.testing.assert_close(x.grad, torch.zeros(2))


@pytest.mark.parametrize("n_experts", [4, 5])
def test_dselect_gates_select_at_most_k_experts_once_the_selectors_are_binary(n_experts: int) -> None:
    torch.manual_seed(0)
    gates = DSelectGates(6, n_gates=3, n_experts=n_experts, k=2)
    x = torch.randn(32, 6)
    soft = gates(x)  # [G, B, n]
    torch.testing.assert_close(soft.sum(-1), torch.ones(3, 32))
    with torch.no_grad():  # push every selector logit beyond +-gamma/2
        gates.selectors.weight.zero_()
        gates.selectors.bias.copy_(torch.where(torch.rand_like(gates.selectors.bias) < 0.5, -3.0, 3.0))
    hard = gates(x)
    torch.testing.assert_close(hard.sum(-1), torch.ones(3, 32))
    assert int((hard > 0).sum(-1).max()) <= 2 and int((soft > 0).sum(-1).max()) > 2


# ---- POSO --------------------------------------------------------------------------------------------
def test_poso_with_a_neutral_personal_gate_is_mmoe_and_the_gate_personalises(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    options = {"embedding_dim": 4, "num_experts": 3, "expert_sizes": (8,), "tower_sizes": (4,)}
    poso = create_model("poso", data.schema, personal_features=["user_id"], **options)
    mmoe = create_model("mmoe", data.schema, **options)
    mmoe.load_state_dict({k: v for k, v in poso.state_dict().items() if not k.startswith("personal_gate")})
    features = features_of(data)
    with torch.no_grad():
        poso.personal_gate.second.weight.zero_()
        poso.personal_gate.second.bias.zero_()  # C * sigmoid(0) = 1 for every expert
        for task, value in poso(features).items():
            torch.testing.assert_close(value, mmoe(features)[task])
        poso.personal_gate.second.weight.normal_()
        assert not torch.allclose(poso(features)["click"], mmoe(features)["click"])
        users = poso.embedding.all_fields(features)[:, poso.personal_index].flatten(1)  # [B, d]
        gates = poso.personal_gate(users)[0]  # [B, E]
    assert gates.min() > 0 and gates.max() < 2  # C = 2
    assert gates.std(0).min() > 0  # every expert is scaled differently for different users


# ---- APG ---------------------------------------------------------------------------------------------
def test_apg_layer_uses_per_example_weights_v_s_u() -> None:
    torch.manual_seed(0)
    layer = GeneratedLinear(2, in_dim=5, out_dim=3, condition_dim=4, rank=2)
    h, z = torch.randn(2, 6, 5), torch.randn(6, 4)
    out = layer(h, z)  # [2, 6, 3]
    cores = layer.cores(z)  # [2, 6, 2, 2]
    for t in range(2):
        for b in range(6):
            weight = layer.v[t] @ cores[t, b] @ layer.u[t]  # W(z_b) [5, 3]
            torch.testing.assert_close(out[t, b], h[t, b] @ weight + layer.bias[t, 0])
    same_input = layer(h[:, :1].expand(-1, 2, -1), z[:2])  # one input, two conditions: two weight matrices
    assert not torch.allclose(same_input[:, 0], same_input[:, 1])


# ---- HMoE --------------------------------------------------------------------------------------------
def test_hmoe_reads_other_tasks_logits_but_trains_only_its_own_tower(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = create_model("hmoe", data.schema, embedding_dim=4, expert_sizes=(8,), tower_sizes=(4,))
    features = features_of(data)
    towers = gradients_of_task(model, features, "click")["towers.layers.0.weight"]  # [T, in, out]
    assert towers[1].abs().max() == 0 and towers[0].abs().max() > 0
    with torch.no_grad():
        before = model(features)["click"]
        model.towers.layers[-1].bias[1] += 1.0  # conversion's logit moves: click's output follows
        assert not torch.allclose(model(features)["click"], before)
    weights = model.label_gates(model.embedding.all_fields(features).flatten(1))  # [T, B, T]
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 64))
