"""The bf16 baseline rounds weights, activations and gradients to bfloat16, on every device."""

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from altgrad.nn import (
    LayerRule,
    PrecisionRecipe,
    QuantizedLinear,
    quantize_model,
    quantized_layers,
    weight_formats,
)
from altgrad.quantization import QuantStats, get_format, make_scaling, quantize
from altgrad.training.model import GPT, GPTConfig

BF16 = get_format("bf16")
MAX = BF16.max_value


def probe() -> np.ndarray:
    """Random float32 bit patterns (every exponent: subnormals, huge values, inf, NaN payloads
    of both signs), every tie and its neighbours in the subnormal and top binades, and specials."""
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2**32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    ties = np.concatenate([np.arange(0x8000, 0x800000, 0x10000), np.arange(0x7F000000 + 0x8000, 0x7F800000, 0x10000)])
    near = np.concatenate([ties, ties - 1, ties + 1]).astype(np.uint32)
    near = np.concatenate([near, near | np.uint32(0x80000000)])
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38], np.float32)
    return np.concatenate([random_bits.view(np.float32), near.view(np.float32), specials])


def expected(x: np.ndarray, saturate: bool) -> np.ndarray:
    """The documented result: ml_dtypes' bfloat16 rounding; saturating, ±max for what
    overflows; NaN as the simulation writes it: +NaN, or NaN with x's sign when not saturating."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and overflow are what is probed
        y = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    if saturate:
        y = np.clip(y, -MAX, MAX)
    nan = np.isnan(x)
    y[nan] = np.float32(np.nan)
    if not saturate:
        y[nan] = np.copysign(y[nan], x[nan])
    return y


@pytest.mark.parametrize("saturate", [True, False])
def test_bf16_round_to_nearest_is_bit_exact_and_counts_the_same_as_the_simulation(saturate):
    x = probe()
    want = expected(x, saturate).view(np.uint32)
    torch._dynamo.reset()
    simulated = torch.compile(quantize, fullgraph=True)  # traced: the bit-pattern simulation
    eager_stats, simulated_stats = QuantStats(), QuantStats()
    # eager: torch's cast to bfloat16
    ours = quantize(torch.from_numpy(x), "bf16", saturate=saturate, stats=eager_stats).numpy().view(np.uint32)
    theirs = simulated(torch.from_numpy(x), BF16, saturate=saturate, stats=simulated_stats).numpy().view(np.uint32)
    assert np.array_equal(ours, want), x[ours != want][:8]
    nan = np.isnan(x)  # traced, the compiler writes a NaN of its own bit pattern
    assert np.array_equal(theirs[~nan], want[~nan]) and np.isnan(theirs.view(np.float32)[nan]).all()
    assert eager_stats.counts() == simulated_stats.counts()
    assert min(eager_stats.counts().values()) > 0  # every kind of event happened


def test_bf16_stochastic_rounding_picks_a_bfloat16_neighbour():
    x = torch.randn(100_000) * 1e-3
    q = quantize(x, BF16, "stochastic", generator=torch.Generator().manual_seed(0))
    nearest = torch.from_numpy(x.numpy().astype(ml_dtypes.bfloat16).astype(np.float32))
    assert torch.equal(q, q.to(torch.bfloat16).float())  # on the bfloat16 grid
    assert ((q - x).abs() < BF16.ulp(x)).all()  # one of the two neighbours of x
    assert 0.2 < (q != nearest).float().mean() < 0.8  # not round-to-nearest


def test_formats_with_float32_exponents_get_no_scaler():
    for kind in ("delayed", "current", "block", "none"):
        assert make_scaling(kind, "bf16") is None and make_scaling(kind, "e8m0") is None
        assert (make_scaling(kind, "e4m3") is None) == (kind == "none")
    assert [f.has_float32_exponents for f in map(get_format, ("bf16", "e8m0", "e7m0", "e5m2"))] == [True, True, False, False]


def bf16_recipe(**options):
    return PrecisionRecipe(weight="bf16", activation="bf16", gradient="bf16", **options)


def as_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.bfloat16).float()


@pytest.mark.parametrize("scaling", ["delayed", "current", "block", "none"])
def test_bf16_layer_computes_with_bfloat16_operands(scaling):
    torch.manual_seed(0)
    linear = nn.Linear(24, 40)
    x = (torch.randn(3, 5, 24) * 1e-3).requires_grad_(True)
    layer = QuantizedLinear.from_linear(linear, bf16_recipe(scaling=scaling, grad_rounding="nearest"))
    y = layer(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    xb, wb, gb = as_bf16(x), as_bf16(linear.weight), as_bf16(grad_out)
    assert torch.equal(y, F.linear(xb, wb, linear.bias))
    assert torch.equal(x.grad, gb @ wb)
    assert torch.equal(linear.weight.grad, gb.reshape(-1, 40).t() @ xb.reshape(-1, 24))
    assert torch.equal(linear.bias.grad, gb.reshape(-1, 40).sum(0))
    assert not torch.equal(y, linear(x))  # not an identity layer
    assert layer.weight_format is BF16 and torch.equal(layer.weight_scale(), torch.ones(()))


def test_bf16_layer_rounds_gradients_stochastically_onto_bfloat16():
    torch.manual_seed(0)
    linear = nn.Linear(24, 4000)
    layer = QuantizedLinear.from_linear(linear, bf16_recipe())  # grad_rounding: stochastic
    y = layer(torch.randn(1, 24))
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    g = linear.bias.grad  # one row: the bias gradient is the quantized gradient itself
    assert torch.equal(g, as_bf16(g)) and ((g - grad_out[0]).abs() < BF16.ulp(grad_out[0])).all()
    assert not torch.equal(g, as_bf16(grad_out[0]))


def test_bf16_model_reports_bf16_weights_and_rules_with_none_stay_high_precision():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    report = quantize_model(model, bf16_recipe(), [LayerRule("*.mlp.*", None)])
    layers = quantized_layers(model)
    assert sorted(layers) == sorted(f"transformer.h.{i}.attn.{p}" for i in range(2) for p in ("c_attn", "c_proj"))
    assert report.quantized == sorted(layers) and "transformer.h.0.mlp.c_fc" in report.high_precision
    assert type(model.transformer.h[0].mlp.c_fc) is nn.Linear
    formats = weight_formats(model)
    assert set(formats) == {layer.weight for layer in layers.values()}
    assert all(fmt is BF16 and scale().item() == 1.0 for fmt, scale in formats.values())
    assert "weight=bf16 activation=bf16 gradient=bf16" in str(report)
    _, loss = model(torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8)))
    loss.backward()
    for layer in layers.values():  # the telemetry the trainer logs saw every operand of every step
        counts = {op: int(q.stats.total) for op, q in layer.quantizers.items()}
        assert counts == {"weight": layer.weight.numel(), "activation": 2 * 8 * layer.in_features,
                          "gradient": 2 * 8 * layer.out_features}
