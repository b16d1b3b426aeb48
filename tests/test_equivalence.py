"""Equivalent formats: the rule, and the rule checked by quantizing."""

import itertools

import pytest
import torch

from altgrad.quantization import (
    FORMAT_NAMES,
    SCALING_KINDS,
    FloatFormat,
    equivalence_classes,
    equivalent,
    get_format,
    make_scaling,
    quantize,
    scaled_quantize,
)

AMAX_SCALINGS = ("delayed", "current", "block")
# a tensor per std, one after another through the same scaler (delayed: later calls use the history)
STDS = (1e-6, 1e-2, 1.0, 30.0, 1e4)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def quantize_sequence(fmt, kind, pow2):
    """Outputs of one scaler of `kind` for fmt over random tensors of every std (4 x 96: MX
    blocks of 32, a padded last block of 32 too at 96 = 3 x 32)."""
    scaling = make_scaling(kind, fmt, pow2=pow2)
    generator = torch.Generator().manual_seed(0)
    return [scaled_quantize(torch.randn(4, 96, generator=generator) * std, fmt, scaling) for std in STDS]


def identical_outputs(a, b, kind, pow2):
    return all(torch.equal(bits(x), bits(y)) for x, y in zip(quantize_sequence(a, kind, pow2), quantize_sequence(b, kind, pow2)))


def test_e1m6_is_e0m7_under_amax_scaling_only():
    for kind in AMAX_SCALINGS:
        assert equivalent("e1m6", "e0m7", kind) and equivalent(get_format("e0m7"), "e1m6", kind)
    assert not equivalent("e1m6", "e0m7", "none")
    assert torch.equal(get_format("e1m6").grid(), 4 * get_format("e0m7").grid())


def test_no_other_registry_formats_are_equivalent():
    for kind in SCALING_KINDS:
        for a, b in itertools.combinations(FORMAT_NAMES, 2):
            assert equivalent(a, b, kind) == ({a, b} == {"e1m6", "e0m7"} and kind != "none"), (a, b, kind)
        assert all(equivalent(name, name, kind) for name in FORMAT_NAMES)


def test_classes_keep_the_given_order_and_include_singletons():
    singles = [(name,) for name in FORMAT_NAMES]
    assert equivalence_classes(FORMAT_NAMES, "none") == singles
    assert equivalence_classes(FORMAT_NAMES, "delayed") == [
        ("bf16",), ("e5m2",), ("e4m3",), ("e3m4",), ("e2m5",), ("e1m6", "e0m7"), ("e7m0",), ("e8m0",)]
    assert equivalence_classes(["e0m7", "e5m2", get_format("e1m6")], "block") == [("e0m7", "e1m6"), ("e5m2",)]
    assert equivalence_classes([], "current") == []
    with pytest.raises(ValueError, match="unknown scaling 'tensorwise'"):
        equivalent("e4m3", "e5m2", "tensorwise")
    with pytest.raises(ValueError, match="unknown format 'e9m9'"):
        equivalence_classes(["e9m9"], "none")


@pytest.mark.parametrize("kind", SCALING_KINDS)
def test_registry_equivalence_is_exactly_identical_quantization(kind):
    # every pair of registry formats: bit-identical outputs on every tensor iff equivalent
    for pow2 in ((True, False) if kind in ("delayed", "current") else (True,)):
        for a, b in itertools.combinations(FORMAT_NAMES, 2):
            assert identical_outputs(a, b, kind, pow2) == equivalent(a, b, kind), (a, b, kind, pow2)


def test_under_no_scaling_only_identical_grids_are_equivalent():
    # the same grid as e1m6 (step 1/32 up to 127/32) from a fixed-point layout with bias -1
    fixed_point = FloatFormat(0, 7, bias=-1, specials="none")
    assert torch.equal(fixed_point.grid(), get_format("e1m6").grid())
    assert equivalent(fixed_point, "e1m6", "none")
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 2
    assert torch.equal(bits(quantize(x, fixed_point)), bits(quantize(x, "e1m6")))
    assert not torch.equal(quantize(x, "e0m7"), quantize(x, "e1m6"))


def test_signedness_specials_and_tie_rule_count_too():
    x = torch.tensor([-1.0, 0.5, 1.5, 100.0, 0.3])
    # same positive grid, one unsigned: negatives clamp to 0
    unsigned = FloatFormat(0, 7, specials="none", signed=False)
    assert not equivalent(unsigned, "e0m7", "current")
    assert quantize(x, unsigned)[0] == 0 and quantize(x, "e0m7")[0] == -127 / 128
    # grid(E1M3 ieee) = 2 x grid(E0M3): the first also has inf, where the second saturates
    with_inf, fixed = FloatFormat(1, 3, specials="ieee"), FloatFormat(0, 3, specials="none")
    assert torch.equal(with_inf.grid(), 2 * fixed.grid()) and not equivalent(with_inf, fixed, "current")
    assert quantize(x, with_inf, saturate=False)[3] == torch.inf and quantize(x, fixed, saturate=False)[3] == 7 / 8
    # identical grids {0, 1, 2}, but without mantissa bits a tie goes away from zero
    no_mantissa, one_mantissa = FloatFormat(2, 0, specials="fn"), FloatFormat(1, 1, bias=0, specials="fn")
    assert torch.equal(no_mantissa.grid(), one_mantissa.grid())
    assert not equivalent(no_mantissa, one_mantissa, "none")
    assert quantize(x, no_mantissa)[1] == 1 and quantize(x, one_mantissa)[1] == 0  # 0.5: the tie
