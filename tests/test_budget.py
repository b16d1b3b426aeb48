"""Parameter counts, the FLOPs convention, job pricing, the budget check, compute-optimal plans."""

from __future__ import annotations

import math

import pytest

from altgrad.experiment.planning import InfeasiblePlan, plan_compute_optimal, shape_family
from altgrad.experiment.pricing import (
    DEVICES,
    BudgetExceeded,
    budget_table,
    budget_totals,
    check_budget,
    dollars,
    duration,
    eng,
    get_device,
    memory_estimate,
    plan_job,
)
from altgrad.training.flops import ModelShape, flops_per_token, param_counts
from altgrad.errors import AltgradError

TINY = ModelShape(n_layer=2, n_head=2, n_embd=8, block_size=4, vocab_size=10)
REF = ModelShape(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=50257)


def test_param_counts_tiny_by_hand():
    # d=8, L=2, T=4, V=10, no biases:
    #   per layer: ln_1 8 + ln_2 8 + qkv 3·64=192 + proj 64 + fc 4·64=256 + proj 256 = 784
    #   2 layers = 1568; ln_f 8 -> non-embedding 1576
    #   + token embedding 10·8 = 80 (tied lm_head, counted once) + position 4·8 = 32 -> 1688
    assert param_counts(TINY) == (1688, 1576)
    # with biases: per layer LNs 2·(8+8)=32, matmuls 768, linear biases 3·8+8+4·8+8 = 72 -> 872
    #   2 layers = 1744; ln_f 16 -> 1760; + 80 + 32 -> 1872
    assert param_counts(ModelShape(2, 2, 8, 4, 10, bias=True)) == (1872, 1760)


def test_param_counts_reference_model():
    # 12·L·d² = 12·6·384² = 10,616,832 ; LayerNorm weights 6·2·384 + 384 = 4,992
    total, nonembed = param_counts(REF)
    assert nonembed == 10_621_824  # ≈ 10.6M
    assert total == 10_621_824 + 50257 * 384 + 256 * 384 == 30_018_816
    # with biases: + 6·13·384 + 384 = 30,336 + 384 -> 10,647,552
    assert param_counts(ModelShape(6, 6, 384, 256, 50257, bias=True))[1] == 10_647_552


def test_flops_per_token_convention():
    # 6·N_nonembed = 6·1576 = 9456 ; lm_head 6·V·d = 480 ; causal attention 6·L·T·d = 384
    assert flops_per_token(TINY) == 9456 + 480 + 384
    assert flops_per_token(TINY, attention="full") == 9456 + 480 + 768  # 12·L·T·d
    assert flops_per_token(TINY, include_attention=False) == 9456 + 480
    assert flops_per_token(TINY, attention="none", lm_head=False) == 9456
    with pytest.raises(AltgradError, match="attention FLOPs convention"):
        flops_per_token(TINY, attention="sparse")
    # reference model: 6·10,621,824 + 6·50257·384 + 6·6·256·384 ≈ 183 MFLOPs/token
    assert flops_per_token(REF) == 6 * 10_621_824 + 6 * 50257 * 384 + 6 * 6 * 256 * 384
    assert eng(flops_per_token(REF)) == "183e6"


def test_model_shape_validation_and_from_config():
    with pytest.raises(AltgradError, match="divisible"):
        ModelShape(n_layer=2, n_head=3, n_embd=8, block_size=4, vocab_size=10)
    with pytest.raises(AltgradError, match="n_layer must be a positive integer"):
        ModelShape(n_layer=0, n_head=2, n_embd=8, block_size=4, vocab_size=10)
    cfg = {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab_size": 50257, "dropout": 0.0}
    assert ModelShape.from_config(cfg) == REF
    with pytest.raises(AltgradError, match="missing vocab_size"):
        ModelShape.from_config({k: v for k, v in cfg.items() if k != "vocab_size"})


def test_eng_notation():
    assert eng(7.94e18) == "7.94e18"
    assert eng(183e6) == "183e6"
    assert eng(12.3e15) == "12.3e15"
    assert eng(999.96e3) == "1.00e6"
    assert eng(1.0) == "1.00e0"


def test_devices_and_plan_job_arithmetic():
    assert DEVICES["h100"].peak_flops == 989e12 and DEVICES["a100"].peak_flops == 312e12
    assert get_device("cpu", peak_flops=2e11).peak_flops == 2e11
    with pytest.raises(AltgradError, match="unknown device 'tpu'"):
        get_device("tpu")
    job = plan_job("e5m2-manifold-s0", REF, tokens=1e9, device="h100")
    assert job.flops == flops_per_token(REF) * 1e9
    assert job.gpu_hours == pytest.approx(job.flops / (989e12 * 0.3) / 3600, rel=1e-12)
    assert job.seconds == pytest.approx(job.gpu_hours * 3600, rel=1e-12) and job.basis == "assumed"
    assert job.usd == pytest.approx(job.gpu_hours * 2.69, rel=1e-12)
    # the simulated precision's overhead over native BF16 divides the MFU
    slow = plan_job("e5m2-manifold-s0", REF, tokens=1e9, device="h100", overhead=2.5)
    assert slow.seconds == pytest.approx(2.5 * job.seconds) and slow.usd == pytest.approx(2.5 * job.usd)
    assert plan_job("x", REF, 1e9, "h100", price=1.0).usd == pytest.approx(job.gpu_hours)
    with pytest.raises(AltgradError, match="mfu must be in"):
        plan_job("x", REF, 1e9, mfu=1.5)
    with pytest.raises(AltgradError, match="tokens must be a positive number"):
        plan_job("x", REF, 0)
    # a custom convention goes through the same code path
    assert plan_job("x", REF, 10, flops_fn=lambda s: 1.0).flops == 10.0


def _grid():
    return [plan_job(f"{f}-manifold-s{s}", REF, tokens=2e9, device="h100") for f in ("e5m2", "e4m3") for s in range(3)] + [
        plan_job("bf16-adamw-s0", shape_family(12, block_size=1024, vocab_size=50257), tokens=3e9)
    ]


def test_budget_table_totals_equal_sum_of_rows():
    jobs = _grid()
    t = budget_totals(jobs)
    assert t.usd == pytest.approx(sum(j.usd for j in jobs), rel=1e-12)
    assert t.flops == pytest.approx(sum(j.flops for j in jobs), rel=1e-12)
    assert t.gpu_hours == pytest.approx(sum(j.gpu_hours for j in jobs), rel=1e-12)
    text = budget_table(jobs, budget_usd=100.0)
    print("\n" + text)
    lines = text.splitlines()
    # every row says whether its estimate is measured or assumed, and its wall time
    assert lines[0].split() == ["job", "device", "basis", "params", "non-emb", "tokens", "FLOPs", "time", "GPU-h",
                                "USD"]
    assert all(line.split()[2] == "assumed" for line in lines[2:2 + len(jobs)])
    total_line = next(line for line in lines if line.startswith("TOTAL"))
    assert total_line.split()[-4:] == [eng(t.flops), duration(t.gpu_hours * 3600), f"{t.gpu_hours:.3f}",
                                       f"{t.usd:.2f}"]
    assert [duration(s) for s in (14.21, 99.96, 210, 5999, 7200)] == ["14.2s", "1.7m", "3.5m", "1.67h", "2.00h"]
    assert all(j.name in text for j in jobs)
    assert len({len(line) for line in lines[:-1]}) == 1  # aligned columns
    assert "left" in lines[-1]


def test_check_budget_passes_and_raises_with_overrun():
    jobs = _grid()
    total = sum(j.usd for j in jobs)
    assert check_budget(jobs, total + 1) == pytest.approx(total)
    budget = round(total / 2, 2)
    with pytest.raises(BudgetExceeded) as ei:
        check_budget(jobs, budget)
    err = ei.value
    assert isinstance(err, AltgradError)
    assert err.overrun_usd == pytest.approx(total - budget)
    msg = str(err)
    print("\n" + msg)
    assert f"${total:.2f}" in msg and f"${budget:.2f}" in msg and f"by ${total - budget:.2f}" in msg
    assert "bf16-adamw-s0" in msg.split("Biggest jobs:")[1]  # the largest job is named
    for knob in ("seeds", "formats", "optimizers", "steps/tokens", "smaller model", "budget.usd"):
        assert knob in msg


def test_plan_20_usd_on_h100():
    plan = plan_compute_optimal(20.0, device="h100", price=2.69, mfu=0.3)
    print("\n" + plan.describe())
    s = plan.shape
    assert s.n_embd % 64 == 0 and s.head_dim == 64 and s.n_embd == 64 * s.n_layer
    # $20 / $2.69/h · 3600 s · 989e12 · 0.3 = 7.94e18 FLOPs
    assert plan.flops_per_run == pytest.approx(20 / 2.69 * 3600 * 989e12 * 0.3, rel=1e-12)
    # Chinchilla's D = 20·N with C counted as the run counts it (not sqrt(C/120), which is 6N FLOPs/token):
    # N* lies between the 16- and 17-layer shapes, and C / D* between their FLOPs per token, counted by hand
    assert plan.d_target == pytest.approx(20 * plan.n_target, rel=1e-9)

    def hand(layers):  # width 64·layers, context 1024, GPT-2 vocabulary: weights, tied lm_head, causal attention
        d = 64 * layers
        n = layers * (12 * d * d + 2 * d) + d
        return n, 6 * n + 6 * 50257 * d + 6 * layers * 1024 * d

    (n16, f16), (n17, f17) = hand(16), hand(17)
    assert n16 < plan.n_target < n17 and f16 < plan.flops_per_run / plan.d_target < f17
    assert plan.n_target < 0.9 * math.sqrt(plan.flops_per_run / 120)
    assert (s.n_layer, s.n_embd, s.n_head) == (17, 1088, 17)
    assert plan.n_params_nonembed == param_counts(s)[1] == 241_521_856
    # the real cost (the one FLOPs convention) stays within budget, to within one step
    assert plan.tokens == plan.steps * 16 * 1024
    cost = plan_job("p", s, plan.tokens, "h100", 0.3, 2.69).usd
    assert cost == pytest.approx(plan.usd_per_run) and 19.99 < cost <= 20.0
    assert 10 < plan.tokens_per_param < 25
    assert plan.memory_bytes < 0.9 * 80e9


def test_plan_refuses_infeasible():
    with pytest.raises(InfeasiblePlan, match="too little for even the smallest shape") as ei:
        plan_compute_optimal(1e-8, "h100")  # ~4e9 FLOPs: less than one batch of the 1-layer shape
    least = ei.value.least_usd
    assert f"the least budget that works is {dollars(least)}" in str(ei.value) and dollars(least) == "$0.000019"
    plan_compute_optimal(least, "h100")  # accepted ...
    with pytest.raises(InfeasiblePlan, match="has no plan within 2x of the law's N"):
        plan_compute_optimal(least * 0.9, "h100")  # ... and 10% less is not
    with pytest.raises(InfeasiblePlan, match=r"GB .* lower batch_size"):
        plan_compute_optimal(20.0, "h100", batch_size=256)
    with pytest.raises(InfeasiblePlan, match=r"< N/10"):
        plan_compute_optimal(20.0, "h100", fit=lambda c: 1e11)  # a law asking for a huge model
    with pytest.raises(InfeasiblePlan, match="price 0"):
        plan_compute_optimal(1.0, "cpu")
    with pytest.raises(InfeasiblePlan, match="budget must be a positive"):
        plan_compute_optimal(0.0, "h100")
    assert isinstance(InfeasiblePlan("x"), AltgradError)


def test_plan_splits_budget_over_runs_and_memory_estimate_is_monotone():
    one = plan_compute_optimal(20.0, "h100", 2.69, 0.3)
    ten = plan_compute_optimal(20.0, "h100", 2.69, 0.3, n_runs=10)
    assert ten.flops_per_run == pytest.approx(one.flops_per_run / 10)
    assert ten.n_params_nonembed < one.n_params_nonembed
    assert ten.usd_total <= 20.0
    m1, m2 = memory_estimate(REF, 8), memory_estimate(REF, 16)
    assert m2.total_bytes > m1.total_bytes and m2.state_bytes == m1.state_bytes == 16 * param_counts(REF)[0]
    assert memory_estimate(REF, 8, flash_attention=True).activation_bytes < m1.activation_bytes
