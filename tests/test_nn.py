import io
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from altgrad.nn import (
    PrecisionRecipe,
    LayerRule,
    QuantizedLinear,
    collect_telemetry,
    quantize_model,
    quantized_layers,
    weight_formats,
)
from altgrad.quantization import DelayedScaling, get_format, quantize, scaled_quantize
from altgrad.training.config import OperandFormats, PrecisionConfig
from altgrad.training.model import GPT, GPTConfig

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32)
E4M3 = PrecisionRecipe(weight="e4m3", activation="e4m3", gradient="e4m3")


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(TINY)


def linear_and_input(bias=True, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(24, 40, bias=bias)
    x = torch.randn(3, 5, 24)
    return linear, x


def on_grid(values, fmt, scale):
    """values * scale is exactly representable in fmt."""
    grid_values = values * scale
    return torch.equal(quantize(grid_values, fmt), grid_values)


# --- recipes ---------------------------------------------------------------------------


def test_recipe_from_config_applies_a_rules_overrides():
    cfg = PrecisionConfig(weight="e4m3", activation="e4m3", gradient="e5m2", scaling="current", margin=1)
    recipe = PrecisionRecipe.from_config(cfg)
    assert (recipe.weight, recipe.activation, recipe.gradient) == ("e4m3", "e4m3", "e5m2")
    assert recipe.scaling == "current" and recipe.margin == 1 and recipe.grad_rounding == "stochastic"
    hybrid = PrecisionRecipe.from_config(cfg, OperandFormats(weight="e3m4"))
    assert (hybrid.weight, hybrid.activation, hybrid.gradient) == ("e3m4", "e4m3", "e5m2")
    baseline = PrecisionRecipe.from_config(PrecisionConfig())  # the config's default: bf16 operands
    assert set(baseline.formats.values()) == {get_format("bf16")} and not baseline.is_identity
    assert PrecisionRecipe().is_identity and PrecisionRecipe(weight=None, activation=None).is_identity
    assert not PrecisionRecipe(gradient="e5m2").is_identity


def test_recipe_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown format 'e9m9'"):
        PrecisionRecipe(weight="e9m9")
    with pytest.raises(ValueError, match="scaling must be one of"):
        PrecisionRecipe(scaling="tensorwise")


# --- QuantizedLinear numerics ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "e0m7", "e7m0"])
def test_forward_and_backward_match_the_formula_bit_for_bit(fmt):
    linear, x = linear_and_input()
    recipe = PrecisionRecipe(weight=fmt, activation=fmt, gradient=fmt, grad_rounding="nearest")
    layer = QuantizedLinear.from_linear(linear, recipe)
    x.requires_grad_(True)
    y = layer(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)

    def ref(t):
        return scaled_quantize(t, fmt, DelayedScaling(fmt, pow2=True))

    xq, wq, gq = ref(x.detach()), ref(linear.weight.detach()), ref(grad_out)
    assert torch.equal(y, F.linear(xq, wq, linear.bias))
    assert torch.equal(x.grad, gq @ wq)
    assert torch.equal(linear.weight.grad, gq.reshape(-1, 40).t() @ xq.reshape(-1, 24))
    assert torch.equal(linear.bias.grad, gq.reshape(-1, 40).sum(0))
    assert not torch.equal(y, linear(x))  # the quantization did something


def test_hybrid_recipe_uses_e4m3_forward_and_e5m2_backward():
    linear, _ = linear_and_input()
    x = torch.randn(1, 24) * 3
    recipe = PrecisionRecipe(weight="e4m3", activation="e4m3", gradient="e5m2")
    layer = QuantizedLinear.from_linear(linear, recipe)
    y = layer(x)
    e4m3, e5m2 = get_format("e4m3"), get_format("e5m2")
    w_ref = scaled_quantize(linear.weight.detach(), e4m3, DelayedScaling(e4m3, pow2=True))
    x_ref = scaled_quantize(x, e4m3, DelayedScaling(e4m3, pow2=True))
    assert torch.equal(y, F.linear(x_ref, w_ref, linear.bias))
    w_scale = layer.quantizers["weight"].scaling.current
    assert on_grid(w_ref, e4m3, w_scale) and not on_grid(w_ref, e5m2, w_scale)  # 3 mantissa bits in use

    y.backward(torch.randn_like(y))
    g = linear.bias.grad  # one row: the bias gradient is q(grad_out) itself
    g_scale = layer.quantizers["gradient"].scaling.current
    assert on_grid(g, e5m2, g_scale)
    assert g_scale == 2.0 ** torch.floor(torch.log2(e5m2.max_value / g.abs().max()))  # e5m2's range, not e4m3's


def test_identity_recipe_is_exactly_nn_linear():
    linear, x = linear_and_input()
    layer = QuantizedLinear.from_linear(linear, PrecisionRecipe())
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1 = layer(x1)
    y1.sum().backward()
    g1 = linear.weight.grad.clone()
    linear.weight.grad = None
    y2 = linear(x2)
    y2.sum().backward()
    assert torch.equal(y1, y2) and torch.equal(x1.grad, x2.grad) and torch.equal(g1, linear.weight.grad)

    model = tiny_gpt()
    before = {n: type(m) for n, m in model.named_modules()}
    report = quantize_model(model, PrecisionRecipe(weight=None, activation=None, gradient=None))
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert report.quantized == [] and "identity recipe" in report["transformer.h.0.mlp.c_fc"].reason


def test_unquantized_operands_stay_exact():
    linear, x = linear_and_input()
    layer = QuantizedLinear.from_linear(linear, PrecisionRecipe(weight="e4m3"))
    w_ref = scaled_quantize(linear.weight.detach(), "e4m3", DelayedScaling("e4m3", pow2=True))
    x.requires_grad_(True)
    y = layer(x)
    y.backward(torch.ones_like(y))
    assert torch.equal(y, F.linear(x, w_ref, linear.bias))
    assert torch.equal(x.grad, torch.ones_like(y) @ w_ref)
    assert set(layer.telemetry()) == {"weight.overflow_rate", "weight.underflow_rate",
                                      "weight.subnormal_rate", "weight.nonfinite_rate"}


def test_autocast_runs_in_bf16_and_quantizes_in_float32():
    linear, x = linear_and_input()
    layer = QuantizedLinear.from_linear(linear, E4M3)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and linear.weight.grad.dtype == torch.float32
    w_ref = scaled_quantize(linear.weight.detach(), "e4m3", DelayedScaling("e4m3", pow2=True))
    x_ref = scaled_quantize(x.detach(), "e4m3", DelayedScaling("e4m3", pow2=True))
    assert torch.equal(y, F.linear(x_ref.bfloat16(), w_ref.bfloat16(), linear.bias.bfloat16()))


def test_eval_forward_records_nothing():
    linear, x = linear_and_input()
    layer = QuantizedLinear.from_linear(linear, PrecisionRecipe(weight="e4m3", activation="e4m3", rounding="stochastic"))
    layer(x)
    before = layer.state_dict()["_extra_state"]
    layer.eval()
    y_eval = layer(x * 100)  # an outlier that training would record
    after = layer.state_dict()["_extra_state"]
    assert torch.equal(before["generator"], after["generator"])
    for op in ("weight", "activation"):
        for part in ("scaling", "stats"):
            assert all(torch.equal(before[op][part][k], after[op][part][k]) for k in before[op][part])
    layer.train()
    assert torch.equal(y_eval, layer(x * 100))  # the same scales and random bits training uses next


def test_weight_scale_is_the_scale_of_the_next_forward():
    linear, x = linear_and_input()
    for scaling in ("delayed", "current", "none", "block"):
        layer = QuantizedLinear.from_linear(linear, PrecisionRecipe(weight="e4m3", scaling=scaling, scale_block=8))
        assert layer.weight_format is get_format("e4m3")
        for _ in range(2):  # before any forward (delayed: first-call rule), and after one
            scale = layer.weight_scale()
            expected = scaled_quantize(linear.weight.detach() * scale, "e4m3") / scale
            assert torch.equal(layer._quantize("weight", linear.weight, layer.generator, True), expected)
    assert layer.weight_scale().shape == linear.weight.shape  # block: per element
    assert QuantizedLinear.from_linear(linear, PrecisionRecipe(activation="e4m3")).weight_format is None


# --- surgery -----------------------------------------------------------------------------


def test_surgery_keeps_parameters_tying_and_state_dict_keys():
    model = tiny_gpt()
    params = dict(model.named_parameters())
    keys = set(model.state_dict())
    report = quantize_model(model, E4M3)
    assert all(p is params[n] for n, p in model.named_parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert type(model.lm_head) is nn.Linear and "lm_head" in report.high_precision
    assert len(quantized_layers(model)) == 4 * TINY.n_layer
    assert {k for k in model.state_dict() if not k.endswith("_extra_state")} == keys
    formats = weight_formats(model)
    assert set(formats) == {m.weight for m in quantized_layers(model).values()}
    fmt, scale_fn = formats[model.transformer.h[0].mlp.c_fc.weight]
    assert fmt.name == "e4m3" and scale_fn().shape == ()


def test_rules_first_match_wins_and_none_keeps_high_precision():
    model = tiny_gpt()
    e5m2 = PrecisionRecipe(weight="e5m2", activation="e5m2", gradient="e5m2")
    rules = [
        LayerRule("transformer.h.0.mlp.*", None),
        LayerRule("*.mlp.c_fc", e5m2),  # h.0.mlp.c_fc was taken by the first rule
        LayerRule("*.attn.*", PrecisionRecipe()),  # identity recipe
        LayerRule("*.nothing_here", e5m2),
    ]
    with pytest.warns(UserWarning, match=r"'\*\.nothing_here' matches no linear layer"):
        report = quantize_model(model, E4M3, rules)
    layers = quantized_layers(model)
    assert sorted(layers) == ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]
    assert layers["transformer.h.1.mlp.c_fc"].recipe == e5m2
    assert layers["transformer.h.1.mlp.c_proj"].recipe == E4M3
    assert report["transformer.h.0.mlp.c_fc"].reason == "rule 'transformer.h.0.mlp.*'"
    assert report["transformer.h.1.mlp.c_fc"].reason == "rule '*.mlp.c_fc'"
    assert report["transformer.h.1.mlp.c_proj"].reason == "default recipe"
    assert report["transformer.h.0.attn.c_attn"].reason == "identity recipe, rule '*.attn.*'"
    assert report["lm_head"].reason == "lm_head skipped (skip_lm_head=True)"
    assert report.quantized == sorted(layers)
    text = str(report)
    assert text.startswith("quantized 2 of 9 linear layers")
    assert "transformer.h.1.mlp.c_fc" in text and "weight=e5m2 activation=e5m2 gradient=e5m2" in text


def test_lm_head_can_be_quantized_and_stays_tied():
    model = tiny_gpt()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(model, None, [LayerRule("lm_head", E4M3)], skip_lm_head=False)
    assert list(quantized_layers(model)) == ["lm_head"]
    assert model.lm_head.weight is model.transformer.wte.weight
    _, loss = model(torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8)))
    loss.backward()
    assert model.transformer.wte.weight.grad is not None


def test_quantizing_twice_is_an_error():
    model = tiny_gpt()
    quantize_model(model, E4M3)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, E4M3)


# --- state ---------------------------------------------------------------------------------


def train_step(model, batch):
    model.zero_grad(set_to_none=True)
    logits, loss = model(*batch)
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_state_dict_round_trip_resumes_exactly():
    recipe = PrecisionRecipe(weight="e4m3", activation="e4m3", gradient="e5m2", amax_history=4)
    torch.manual_seed(1)
    batches = [(torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8))) for _ in range(4)]
    trained = tiny_gpt()
    quantize_model(trained, recipe)
    for batch in batches[:3]:
        train_step(trained, batch)
        with torch.no_grad():
            for p in trained.parameters():
                p.mul_(1.1)  # moves the amax history
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = tiny_gpt(seed=5)
    quantize_model(resumed, recipe)
    resumed.load_state_dict(state)
    a = trained.transformer.h[1].mlp.c_proj
    b = resumed.transformer.h[1].mlp.c_proj
    assert torch.equal(a.quantizers["gradient"].scaling.amax_history, b.quantizers["gradient"].scaling.amax_history)
    assert a.telemetry() == b.telemetry() and a.quantizers["weight"].stats.total > 0
    logits_a, grads_a = train_step(trained, batches[3])
    logits_b, grads_b = train_step(resumed, batches[3])
    assert torch.equal(logits_a, logits_b)
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)

    fresh = tiny_gpt()
    quantize_model(fresh, recipe)
    fresh.load_state_dict(state)
    fresh.transformer.h[1].mlp.c_proj.generator.manual_seed(123)  # only the rounding stream differs
    _, grads_c = train_step(fresh, batches[3])
    name = "transformer.h.1.mlp.c_proj.weight"
    assert not torch.equal(grads_a[name], grads_c[name])


def test_loading_a_checkpoint_from_another_recipe_fails_clearly():
    model = tiny_gpt()
    quantize_model(model, E4M3)
    other = tiny_gpt()
    quantize_model(other, PrecisionRecipe(weight="e4m3"))
    with pytest.raises(ValueError, match="the precision recipe changed"):
        other.load_state_dict(model.state_dict())


def test_rounding_seeds_depend_on_layer_name_and_seed():
    linear, _ = linear_and_input()
    recipe = PrecisionRecipe(gradient="e4m3")

    def first_draw(name, seed):
        return torch.rand(4, generator=QuantizedLinear.from_linear(linear, recipe, name, seed).generator)

    assert torch.equal(first_draw("a", 0), first_draw("a", 0))
    assert not torch.equal(first_draw("a", 0), first_draw("b", 0))
    assert not torch.equal(first_draw("a", 0), first_draw("a", 1))


# --- telemetry -----------------------------------------------------------------------------


def test_telemetry_counts_exactly_and_totals_by_elements():
    recipe = PrecisionRecipe(weight="e4m3", activation="e4m3", scaling="none")
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    with torch.no_grad():
        for m in model:
            m.weight.fill_(0.01)
            m.bias.zero_()
    quantize_model(model, recipe)
    x = torch.full((2, 8), 0.5)
    x[0, :3] = 1000.0  # 3 of 16 activations beyond e4m3's max (448)
    model(x)
    first, second = model[0], model[1]
    assert first.telemetry()["activation.overflow_rate"] == 3 / 16
    assert first.telemetry()["weight.overflow_rate"] == 0.0
    assert second.telemetry()["activation.overflow_rate"] == 0.0
    # 0.01 is not an e4m3 value; it rounds to a subnormal (e4m3's min normal is 2^-6)
    assert first.telemetry()["weight.subnormal_rate"] == 1.0

    metrics = collect_telemetry(model)
    assert metrics["layer.0.activation.overflow_rate"] == 3 / 16
    assert metrics["quant.activation.overflow_rate"] == 3 / (16 + 16)  # by element counts
    assert metrics["quant.weight.subnormal_rate"] == 1.0
    assert "quant.gradient.overflow_rate" not in metrics  # gradients not quantized here
    assert collect_telemetry(model)["quant.activation.overflow_rate"] == 0.0  # reset=True cleared it


# --- real training -------------------------------------------------------------------------


def test_e4m3_training_reduces_the_loss():
    model = tiny_gpt()
    quantize_model(model, E4M3)
    torch.manual_seed(0)
    batch = (torch.randint(0, 32, (4, 8)), torch.randint(0, 32, (4, 8)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        optimizer.zero_grad(set_to_none=True)
        _, loss = model(*batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    metrics = collect_telemetry(model)
    assert metrics["quant.gradient.nonfinite_rate"] == 0.0
