import copy
import math

import pytest
import torch
from torch import nn

from fastbt.config import OptimConfig
from fastbt.train.optim import build_optimizer, lr_at, set_lr


class OfficialLARS(torch.optim.Optimizer):
    """facebookresearch/barlowtwins main.py, verbatim in substance: the reference."""

    def __init__(self, params, lr, weight_decay=0, momentum=0.9, eta=0.001,
                 weight_decay_filter=False, lars_adaptation_filter=False):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        weight_decay_filter=weight_decay_filter,
                        lars_adaptation_filter=lars_adaptation_filter)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if not g["weight_decay_filter"] or not p.ndim == 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                if not g["lars_adaptation_filter"] or not p.ndim == 1:
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0, (g["eta"] * param_norm / update_norm), one),
                                    one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4, bias=False))
    with torch.no_grad():  # BN weights non-trivial, and one zero-norm weight to hit the where()
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.1, 0.1)
    return model


def official_optimizer(model, wd):
    weights = [p for p in model.parameters() if p.ndim != 1]
    biases = [p for p in model.parameters() if p.ndim == 1]
    return OfficialLARS([{"params": weights}, {"params": biases}], lr=0, weight_decay=wd,
                        weight_decay_filter=True, lars_adaptation_filter=True)


def test_lars_matches_the_official_update_over_steps():
    ours_model = small_model()
    ref_model = copy.deepcopy(ours_model)
    wd = 1e-2  # large enough that a decay bug shows
    ours = build_optimizer(ours_model, weight_decay=wd, momentum=0.9, eta=0.001)
    ref = official_optimizer(ref_model, wd)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    for step, lrs in enumerate([(0.5, 0.02), (0.3, 0.01), (0.1, 0.05)]):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            set_lr(opt, lrs)
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
        for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=f"{name} after step {step}")
    moved = {name for (name, p), q in zip(ours_model.named_parameters(), small_model().parameters())
             if not torch.equal(p, q)}
    # 0.bias feeds a BatchNorm, which cancels it: its gradient is exactly zero, so it stays
    assert moved == {"0.weight", "1.weight", "1.bias", "3.weight"}


def test_bias_and_norm_parameters_get_no_decay_and_no_adaptation():
    model = small_model()
    opt = build_optimizer(model, weight_decay=0.5, momentum=0.0, eta=0.001)
    weights, biases = opt.param_groups
    assert {id(p) for p in biases["params"]} == {id(p) for p in model.parameters() if p.ndim == 1}
    assert biases["weight_decay"] == 0.0 and biases["adapt"] is False
    # with no decay, no adaptation and no momentum, a bias moves by exactly -lr * grad
    set_lr(opt, (0.0, 0.1))
    before = model[0].bias.detach().clone()
    model(torch.randn(4, 6)).sum().backward()
    grad = model[0].bias.grad.clone()
    opt.step()
    torch.testing.assert_close(model[0].bias, before - 0.1 * grad)


def test_zero_weight_uses_trust_ratio_one():
    model = nn.Linear(3, 2, bias=False)
    nn.init.zeros_(model.weight)
    opt = build_optimizer(model, weight_decay=0.0, momentum=0.0, eta=0.001)
    set_lr(opt, (1.0, 0.0))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.testing.assert_close(model.weight, -torch.ones(2, 3))  # update = grad, unscaled


OPTIM = OptimConfig()  # the paper's final ratio (0.001) and multipliers (0.2, 0.0048)
SCHEDULE = dict(total_steps=1000, warmup_steps=100, base_lr=8.0, final_ratio=OPTIM.final_lr_ratio,
                multipliers=(OPTIM.lr_weights, OPTIM.lr_biases))


def test_lr_warmup_starts_at_zero_and_ends_at_the_peak():
    assert lr_at(0, **SCHEDULE) == (0.0, 0.0)
    w, b = lr_at(50, **SCHEDULE)
    assert w == pytest.approx(8.0 * 0.5 * 0.2) and b == pytest.approx(8.0 * 0.5 * 0.0048)
    w, b = lr_at(100, **SCHEDULE)  # first step after warmup: the peak
    assert w == pytest.approx(8.0 * 0.2) and b == pytest.approx(8.0 * 0.0048)
    assert max(lr_at(s, **SCHEDULE)[0] for s in range(1000)) == pytest.approx(1.6)


def test_lr_cosine_midpoint_and_final_value():
    mid = lr_at(550, **SCHEDULE)[0] / 0.2
    assert mid == pytest.approx(8.0 * 0.5 + 8.0 * 0.001 * 0.5)
    assert lr_at(1000, **SCHEDULE)[0] == pytest.approx(8.0 * 0.001 * 0.2)
    final = lr_at(999, **SCHEDULE)[0] / 0.2
    assert 8.0 * 0.001 < final < 8.0 * 0.001 * 1.01
    lrs = [lr_at(s, **SCHEDULE)[0] for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay


def test_lr_matches_the_official_formula():
    def official(step, max_steps, warmup_steps, base_lr):
        if step < warmup_steps:
            return base_lr * step / warmup_steps
        step -= warmup_steps
        max_steps -= warmup_steps
        q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
        end_lr = base_lr * 0.001
        return base_lr * q + end_lr * (1 - q)

    for s in (0, 7, 99, 100, 101, 420, 999):
        w, b = lr_at(s, **SCHEDULE)
        ref = official(s, 1000, 100, 8.0)
        assert (w, b) == (pytest.approx(ref * 0.2), pytest.approx(ref * 0.0048))


def test_compiled_lars_matches_eager_lars_without_recompiling_for_new_lrs():
    eager_model, compiled_model = small_model(), small_model()
    eager = build_optimizer(eager_model, weight_decay=1e-2, momentum=0.9, eta=0.001)
    compiled = build_optimizer(compiled_model, weight_decay=1e-2, momentum=0.9, eta=0.001, compiled=True)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    torch._dynamo.utils.counters.clear()
    for step, lrs in enumerate([(0.5, 0.02), (0.3, 0.01), (0.1, 0.05)]):
        for model, opt in ((eager_model, eager), (compiled_model, compiled)):
            set_lr(opt, lrs)
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
        for p, q in zip(compiled_model.parameters(), eager_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=f"after step {step}")
    # one graph per parameter group (weights adapt, biases do not), none per new LR
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
