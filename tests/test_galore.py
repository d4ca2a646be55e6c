"""GaLore-AdamW: its projected step against a transcription of galore-torch (the paper's code,
jiaweizzhao/GaLore: ``galore_torch/galore_projector.py``'s ``GaLoreProjector`` and
``galore_torch/adamw.py``'s ``AdamW``), bit for bit; its unprojected parameters against
``torch.optim.AdamW``, bit for bit; its state as plain tensors, resumed exactly."""

import copy
import io
import math

import pytest
import torch

from nnunetv2_segresmamba.optimizers.galore import GaLoreAdamW

LR, BETAS, EPS, WD = 1e-2, (0.9, 0.999), 1e-8, 0.05


class TranscribedGaLoreProjector:
    """galore-torch's ``GaLoreProjector`` with ``proj_type="std"`` (its default), as written there."""

    def __init__(self, rank, update_proj_gap, scale):
        self.rank, self.update_proj_gap, self.scale, self.ortho_matrix = rank, update_proj_gap, scale, None

    def project(self, full_rank_grad, iter):
        if full_rank_grad.shape[0] >= full_rank_grad.shape[1]:
            if self.ortho_matrix is None or iter % self.update_proj_gap == 0:
                _, _, vh = torch.linalg.svd(full_rank_grad, full_matrices=False)
                self.ortho_matrix = vh[:self.rank, :]
            return torch.matmul(full_rank_grad, self.ortho_matrix.t())
        if self.ortho_matrix is None or iter % self.update_proj_gap == 0:
            u, _, _ = torch.linalg.svd(full_rank_grad, full_matrices=False)
            self.ortho_matrix = u[:, :self.rank]
        return torch.matmul(self.ortho_matrix.t(), full_rank_grad)

    def project_back(self, low_rank_grad):
        if low_rank_grad.shape[0] >= low_rank_grad.shape[1]:
            full_rank_grad = torch.matmul(low_rank_grad, self.ortho_matrix)
        else:
            full_rank_grad = torch.matmul(self.ortho_matrix, low_rank_grad)
        return full_rank_grad * self.scale


def transcribed_galore_adamw(weight, gradients, rank, gap, scale):
    """The weight after one step of galore-torch's ``AdamW.step`` per gradient, for a group with
    ``rank`` (``correct_bias`` True, its default). galore-torch projects 2D weights; a conv weight
    is taken as the matrix (out, in x k...) here, and the step reshaped back, as our optimizer does."""
    p = weight.clone()
    state = {"step": 0, "projector": TranscribedGaLoreProjector(rank, gap, scale)}
    beta1, beta2 = BETAS
    for grad in gradients:
        grad = state["projector"].project(grad.reshape(grad.shape[0], -1), state["step"])
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        exp_avg.mul_(beta1).add_(grad, alpha=(1.0 - beta1))
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().add_(EPS)
        step_size = LR * math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
        norm_grad = state["projector"].project_back(exp_avg / denom)
        p.add_(norm_grad.reshape(p.shape), alpha=-step_size)
        p.add_(p, alpha=(-LR * WD))
    return p


def run(optimizer_params, parameters, gradients):
    optimizer = GaLoreAdamW(optimizer_params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    for step_gradients in gradients:
        for p, g in zip(parameters, step_gradients):
            p.grad = g.clone()
        optimizer.step()
    return optimizer


def torch_adamw(parameters, gradients, **implementation):
    """The parameters after ``torch.optim.AdamW`` (our settings) took one step per gradients' tuple."""
    params = [p.clone().requires_grad_() for p in parameters]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, **implementation)
    for step_gradients in gradients:
        for p, g in zip(params, step_gradients):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (6, 3, 3, 3, 3), (4, 2, 3, 3)])
def test_projected_steps_are_galore_torchs_bit_for_bit(shape):
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(shape, generator=g), torch.randn(shape[0], generator=g)
    gradients = [(torch.randn(shape, generator=g), torch.randn(shape[0], generator=g)) for _ in range(5)]
    params = [weight.clone().requires_grad_(), bias.clone().requires_grad_()]
    optimizer = run([{"params": params, "rank": 2, "update_proj_gap": 2, "scale": 0.5}], params, gradients)
    expected = transcribed_galore_adamw(weight, [w for w, _ in gradients], rank=2, gap=2, scale=0.5)
    assert torch.equal(params[0].detach(), expected)
    assert torch.equal(params[1].detach(), torch_adamw([bias], [(b,) for _, b in gradients])[0])  # vectors: AdamW's
    rows, cols = shape[0], math.prod(shape[1:])
    moment = optimizer.state[params[0]]["exp_avg"]
    assert moment.shape == ((rows, 2) if rows >= cols else (2, cols))  # the moments live in the projection


def test_unprojected_parameters_take_torchs_adamw_step_bit_for_bit():
    """Biases, norms, A_log, D and the weights of groups without a rank: torch.optim.AdamW's
    single-tensor step (foreach=False), with weight decay, over several steps; not the Hugging
    Face form of the projected step (eps before the bias correction, the decay after the step)."""
    g = torch.Generator().manual_seed(1)
    shapes = [(7,), (8, 3), (5, 2, 3)]
    parameters = [torch.randn(s, generator=g) for s in shapes]
    gradients = [tuple(torch.randn(s, generator=g) for s in shapes) for _ in range(6)]
    params = [p.clone().requires_grad_() for p in parameters]
    run([{"params": params}], params, gradients)
    expected = torch_adamw(parameters, gradients, foreach=False)
    assert all(torch.equal(p.detach(), e) for p, e in zip(params, expected))


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
