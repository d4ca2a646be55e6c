"""GaLore-AdamW against a plain reference written from the paper's algorithm: the projection from
the gradient's SVD, Adam's moments in the projected space, the step projected back; its state as
plain tensors, resumed exactly."""

import copy
import io
import math

import pytest
import torch

from nnunetv2_segresmamba.optimizers.galore import GaLoreAdamW

LR, BETAS, EPS, WD = 1e-2, (0.9, 0.999), 1e-8, 0.05


def reference_galore_adamw(weight, gradients, rank, gap, scale, projected=True):
    """The weight after one step per gradient, spelled out step by step."""
    w = weight.clone()
    m = v = p = None
    for t, g in enumerate(gradients, start=1):
        g = g.reshape(g.shape[0], -1) if projected else g
        if projected:
            rows, cols = g.shape
            if (t - 1) % gap == 0:  # refresh the projector from this gradient's SVD
                u, _, vh = torch.linalg.svd(g, full_matrices=False)
                p = vh[:rank] if rows >= cols else u[:, :rank]
            g = g @ p.T if rows >= cols else p.T @ g
        m = (1 - BETAS[0]) * g if m is None else BETAS[0] * m + (1 - BETAS[0]) * g
        v = (1 - BETAS[1]) * g * g if v is None else BETAS[1] * v + (1 - BETAS[1]) * g * g
        step_size = LR * math.sqrt(1 - BETAS[1] ** t) / (1 - BETAS[0] ** t)
        n = m / (v.sqrt() + EPS)
        if projected:
            n = (n @ p if rows >= cols else p @ n).reshape(weight.shape) * scale
        w = w - step_size * n
        w = w - LR * WD * w
    return w


def run(optimizer_params, parameters, gradients):
    optimizer = GaLoreAdamW(optimizer_params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    for step_gradients in gradients:
        for p, g in zip(parameters, step_gradients):
            p.grad = g.clone()
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (6, 3, 3, 3, 3), (4, 2, 3, 3)])
def test_projected_steps_match_the_plain_reference(shape):
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(shape, generator=g), torch.randn(shape[0], generator=g)
    gradients = [(torch.randn(shape, generator=g), torch.randn(shape[0], generator=g)) for _ in range(5)]
    params = [weight.clone().requires_grad_(), bias.clone().requires_grad_()]
    optimizer = run([{"params": params, "rank": 2, "update_proj_gap": 2, "scale": 0.5}], params, gradients)
    expected = reference_galore_adamw(weight, [w for w, _ in gradients], rank=2, gap=2, scale=0.5)
    torch.testing.assert_close(params[0].detach(), expected, atol=1e-6, rtol=1e-5)
    expected_bias = reference_galore_adamw(bias, [b for _, b in gradients], 2, 2, 0.5, projected=False)
    torch.testing.assert_close(params[1].detach(), expected_bias, atol=1e-6, rtol=1e-5)  # vectors: unprojected
    rows, cols = shape[0], math.prod(shape[1:])
    moment = optimizer.state[params[0]]["exp_avg"]
    assert moment.shape == ((rows, 2) if rows >= cols else (2, cols))  # the moments live in the projection


def test_groups_without_rank_take_plain_steps():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(8, 3, generator=g)
    gradients = [(torch.randn(8, 3, generator=g),) for _ in range(3)]
    param = weight.clone().requires_grad_()
    run([{"params": [param]}], [param], gradients)
    expected = reference_galore_adamw(weight, [w for (w,) in gradients], 0, 1, 1.0, projected=False)
    torch.testing.assert_close(param.detach(), expected, atol=1e-6, rtol=1e-5)


def test_state_is_plain_tensors_and_resumes_exactly():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(10, 4, 3, 3, generator=g)
    gradients = [(torch.randn(10, 4, 3, 3, generator=g),) for _ in range(6)]
    group = {"rank": 3, "update_proj_gap": 2, "scale": 0.25}
    straight = weight.clone().requires_grad_()
    run([{"params": [straight], **group}], [straight], gradients)

    first = weight.clone().requires_grad_()
    interrupted = run([{"params": [first], **group}], [first], gradients[:3])
    buffer = io.BytesIO()
    torch.save({"optimizer_state": interrupted.state_dict(), "weights": first.detach()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as nnU-Net's checkpoints are read
    resumed = saved["weights"].clone().requires_grad_()
    optimizer = GaLoreAdamW([{"params": [resumed], **group}], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    optimizer.load_state_dict(saved["optimizer_state"])
    for (gradient,) in gradients[3:]:
        resumed.grad = gradient.clone()
        optimizer.step()
    assert torch.equal(resumed, straight)  # step 4 uses the saved projector, step 5 refreshes it


def test_the_projected_state_is_a_third_of_adamws_for_a_wide_conv():
    conv = torch.nn.Conv3d(384, 384, 3, bias=False)
    optimizer = GaLoreAdamW([{"params": list(conv.parameters()), "rank": 128}])
    conv.weight.grad = torch.randn_like(conv.weight)
    optimizer.step()
    adamw_bytes = 2 * conv.weight.numel() * 4
    assert optimizer.state_bytes() / adamw_bytes == pytest.approx((2 * 128 * 10368 + 384 * 128) / (2 * 384 * 10368))
    assert optimizer.state_bytes() / adamw_bytes < 0.35


def test_groups_added_later_get_the_defaults_and_checks():
    optimizer = GaLoreAdamW([torch.zeros(2, requires_grad=True)])
    optimizer.add_param_group({"params": [torch.zeros(3, 3, requires_grad=True)], "rank": 2})
    assert optimizer.param_groups[1]["update_proj_gap"] == 200 and optimizer.param_groups[1]["scale"] == 0.25
    with pytest.raises(ValueError, match="must be positive"):
        optimizer.add_param_group({"params": [torch.zeros(3, 3, requires_grad=True)], "rank": 2,
                                   "update_proj_gap": 0})


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="rank and update_proj_gap must be positive"):
        GaLoreAdamW([{"params": [torch.zeros(2, 2, requires_grad=True)], "rank": 0}])
    with pytest.raises(ValueError, match="invalid AdamW settings"):
        GaLoreAdamW([torch.zeros(2, requires_grad=True)], lr=-1.0)
    assert copy.deepcopy(GaLoreAdamW([torch.zeros(2, requires_grad=True)])).state_bytes() == 0
