"""The numerics core against ml_dtypes (bit for bit) and against the format definitions."""

import math
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch

from altgrad.quantization import (
    FORMAT_NAMES,
    BlockScaling,
    CurrentScaling,
    DelayedScaling,
    FloatFormat,
    QuantStats,
    decode,
    dequantize,
    encode,
    fake_quantize,
    get_format,
    quantize,
    scaled_quantize,
)
from altgrad.quantization.formats import per_format_constants

quantize_module = sys.modules["altgrad.quantization.quantize"]

# ml_dtypes type -> the same layout here
ORACLES = {
    "float8_e5m2": FloatFormat(5, 2, specials="ieee"),
    "float8_e4m3fn": FloatFormat(4, 3, specials="fn"),
    "float8_e4m3": FloatFormat(4, 3, specials="ieee"),
    "float8_e3m4": FloatFormat(3, 4, specials="ieee"),
    "float6_e3m2fn": FloatFormat(3, 2, specials="none"),
    "float6_e2m3fn": FloatFormat(2, 3, specials="none"),
    "float4_e2m1fn": FloatFormat(2, 1, specials="none"),
    "float8_e8m0fnu": FloatFormat(8, 0, specials="fn", signed=False),
    "bfloat16": FloatFormat(8, 7, specials="ieee"),
}


def bits_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise identical float32 bit patterns, any NaN equal to any NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def oracle_round(values: np.ndarray, name: str) -> np.ndarray:
    return values.astype(getattr(ml_dtypes, name)).astype(np.float32)


def all_codes(fmt: FloatFormat) -> torch.Tensor:
    return torch.arange(2**fmt.bits, dtype=torch.int64)


def probe_values(fmt: FloatFormat) -> np.ndarray:
    """Every representable value, every midpoint between neighbours and the float32
    numbers either side of it, ±max ± one step, specials, and 1M random bit patterns
    spanning all of float32 (subnormals, huge values, inf and NaN included)."""
    grid = fmt.grid().numpy()
    mids = ((grid[:-1].astype(np.float64) + grid[1:]) / 2).astype(np.float32)
    near = np.concatenate([np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])
    top, step = np.float32(fmt.max_value), np.float32(fmt.ulp(fmt.max_value).item())
    edges = np.array([top + step, top - step, top + step / 2, -(top + step), -(top + step / 2), top * 4], np.float32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, fmt.min_subnormal / 2, fmt.min_subnormal / 4], np.float32)
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2**32, size=1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([grid, mids, near, edges, specials, -specials, random_bits])


@pytest.mark.parametrize("name", ORACLES)
def test_decode_matches_ml_dtypes_for_every_code(name):
    fmt = ORACLES[name]
    codes = all_codes(fmt)
    ours = decode(codes, fmt).numpy()
    theirs = codes.numpy().astype(np.uint8 if fmt.bits <= 8 else np.uint16)
    theirs = theirs.view(getattr(ml_dtypes, name)).astype(np.float32)
    same = bits_equal(ours, theirs)
    if name == "float8_e8m0fnu":
        # Deliberate: code 0 is zero here (one value rule for all formats), 2^-127 in OCP E8M0.
        assert ours[0] == 0.0 and theirs[0] == 2.0**-127
        same[0] = True
    assert same.all(), (codes[~same][:8], ours[~same][:8], theirs[~same][:8])


@pytest.mark.parametrize("name", ORACLES)
def test_quantize_and_encode_match_ml_dtypes(name):
    fmt = ORACLES[name]
    x = probe_values(fmt)
    if not fmt.signed:  # unsigned E8M0: compare where OCP and this library agree
        x = x[(x > fmt.min_normal) | np.isnan(x)]
    theirs = oracle_round(x, name)
    ours = quantize(torch.from_numpy(x), fmt, saturate=False).numpy()
    same = bits_equal(ours, theirs)
    if fmt.specials == "none":
        # Deliberate: NaN stays NaN in the float32 simulation; ml_dtypes maps it to -0.
        nan_in = np.isnan(x)
        assert (theirs[nan_in] == 0).all() and np.isnan(ours[nan_in]).all()
        same |= nan_in
    assert same.all(), (x[~same][:8], ours[~same][:8], theirs[~same][:8])
    codes = encode(torch.from_numpy(x), fmt, saturate=False).numpy()
    their_codes = x.astype(getattr(ml_dtypes, name)).view(np.uint8 if fmt.bits <= 8 else np.uint16)
    nan_ok = np.isnan(theirs)  # any NaN pattern is NaN; ml_dtypes keeps the input's sign bit
    if fmt.specials == "none":  # NaN -> a zero code; ml_dtypes gives it the opposite sign bit
        magnitude_bits = (1 << (fmt.bits - 1)) - 1
        nan_ok |= np.isnan(x) & ((codes & magnitude_bits) == 0) & ((their_codes & magnitude_bits) == 0)
    assert ((codes == their_codes) | nan_ok).all()


@pytest.mark.parametrize("name", ORACLES)
def test_saturation_is_the_deliberate_difference(name):
    fmt = ORACLES[name]
    x = torch.from_numpy(probe_values(fmt))
    strict, saturating = quantize(x, fmt, saturate=False), quantize(x, fmt)
    finite = torch.isfinite(strict)
    assert torch.equal(saturating[finite], strict[finite])
    overflowed = ~finite & ~torch.isnan(x)
    if fmt.signed:
        assert torch.equal(saturating[overflowed], fmt.max_value * torch.sign(x[overflowed]))
    else:
        assert (saturating[overflowed & (x > 0)] == fmt.max_value).all()


def test_registry_formats_have_the_documented_ranges():
    expect = {  # name: (max, min_subnormal, distinct finite values)
        "e5m2": (57344.0, 2.0**-16, 247),
        "e4m3": (448.0, 2.0**-9, 253),
        "e3m4": (124.0, 0.0625, 255),
        "e2m5": (7.875, 1 / 32, 255),
        "e1m6": (127 / 32, 1 / 32, 255),
        "e0m7": (127 / 128, 1 / 128, 255),
        "e7m0": (2.0**64, 2.0**-62, 255),
        "e8m0": (2.0**127, 2.0**-126, 255),
    }
    for name, (top, smallest, count) in expect.items():
        fmt = get_format(name)
        assert (fmt.max_value, fmt.min_subnormal, fmt.num_finite) == (top, smallest, count), name
        assert len(fmt.grid()) == fmt.num_finite
    assert set(FORMAT_NAMES) == {"bf16", *expect}


def definition_grid(name: str) -> list[float]:
    """Positive values straight from each exotic format's definition, independent of the code."""
    if name == "e0m7":
        return [k / 128 for k in range(128)]
    if name == "e1m6":
        return [k / 32 for k in range(128)]
    if name == "e7m0":
        return [0.0] + [2.0**k for k in range(-62, 65)]
    if name == "e2m5":  # bias 1: subnormals k/32, normals (1 + m/32) * 2^(e-1)
        return [k / 32 for k in range(32)] + [(1 + m / 32) * 2.0 ** (e - 1) for e in (1, 2, 3) for m in range(32)]
    if name == "e3m4":  # bias 1: subnormals k/16 (first 1/16), normals up to 1.9375 * 64 = 124
        return [k / 16 for k in range(16)] + [(1 + m / 16) * 2.0 ** (e - 1) for e in range(1, 8) for m in range(16)]
    raise KeyError(name)


@pytest.mark.parametrize("name", ["e0m7", "e1m6", "e2m5", "e3m4", "e7m0"])
def test_exotic_grid_and_round_to_nearest_even(name):
    fmt = get_format(name)
    positives = sorted(set(definition_grid(name)))
    expected = torch.tensor(sorted({-v for v in positives} | set(positives)), dtype=torch.float32)
    assert torch.equal(fmt.grid(), expected)

    grid = fmt.grid().double()
    codes = encode(fmt.grid(), fmt).long()
    x = torch.from_numpy(probe_values(fmt))
    x = x[torch.isfinite(x) & (x.abs() <= fmt.max_value)].double()
    # brute force in chunks: the nearest grid value, ties to the even code, or with no
    # mantissa bits (e7m0) to the larger magnitude
    tie_winner = (codes % 2 == 0) if fmt.man_bits else torch.ones_like(codes, dtype=torch.bool)
    chosen = []
    for chunk in x.split(4096):
        d = (chunk[:, None] - grid[None, :]).abs()
        best = d.min(dim=1, keepdim=True).values
        candidates = d == best
        if not fmt.man_bits:  # of two candidates keep the one farther from zero
            candidates &= grid.abs()[None, :] == (candidates * grid.abs()[None, :]).amax(dim=1, keepdim=True)
        preferred = tie_winner[None, :] & candidates
        pick = torch.where(preferred.any(dim=1, keepdim=True), preferred, candidates).float().argmax(dim=1)
        chosen.append(grid[pick])
    expected_q = torch.cat(chosen).float()
    ours = quantize(x.float(), fmt)
    assert torch.equal(ours.abs(), expected_q.abs())


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_decode_encode_round_trips_every_finite_code(name):
    fmt = get_format(name)
    values = decode(all_codes(fmt), fmt)
    finite = torch.isfinite(values)
    back = decode(encode(values[finite], fmt), fmt)
    assert bits_equal(back.numpy(), values[finite].numpy()).all()


def test_stochastic_rounding_is_unbiased_and_picks_only_neighbours():
    n = 200_000
    for name in ("e4m3", "e5m2", "e3m4", "e0m7", "e7m0"):
        fmt = get_format(name)
        grid = fmt.grid()
        lower, upper = grid[len(grid) // 2 + 3], grid[len(grid) // 2 + 4]  # small positives
        sub_lo, sub_hi = grid[len(grid) // 2], grid[len(grid) // 2 + 1]  # 0 and the smallest step
        for lo, hi in ((lower, upper), (sub_lo, sub_hi)):
            x = torch.full((n,), float(lo + 0.3 * (hi - lo)))
            q = quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(1))
            assert ((q == lo) | (q == hi)).all(), name
            step = float(hi - lo)
            # a Bernoulli(0.3) mean; 6 sigma bound. Round-to-nearest (error 0.3 step) fails it.
            bound = 6 * math.sqrt(0.3 * 0.7 / n) * step
            assert abs(q.double().mean().item() - x[0].item()) < bound, name
            rne = quantize(x, fmt).double().mean().item()
            assert abs(rne - x[0].item()) > bound


def test_stochastic_rounding_is_reproducible_from_a_generator():
    x = torch.randn(10_000)
    a = quantize(x, "e4m3", "stochastic", generator=torch.Generator().manual_seed(7))
    b = quantize(x, "e4m3", "stochastic", generator=torch.Generator().manual_seed(7))
    c = quantize(x, "e4m3", "stochastic", generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    grid_points = quantize(x, "e4m3")
    assert torch.equal(quantize(grid_points, "e4m3", "stochastic"), grid_points)  # on-grid values never move


def compiled(fn):
    """A fresh torch.compile of fn that must trace in one graph (a graph break raises)."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_compiled_quantize_is_bit_identical_and_counts_the_same(name):
    # torch.compile fuses the same code; the result and every telemetry count must not change
    fmt = get_format(name)
    x = torch.from_numpy(probe_values(fmt))
    fast = compiled(quantize)
    for saturate in (True, False):
        assert bits_equal(fast(x, fmt, saturate=saturate).numpy(), quantize(x, fmt, saturate=saturate).numpy()).all()
        eager_stats, compiled_stats = QuantStats(), QuantStats()
        quantize(x, fmt, saturate=saturate, stats=eager_stats)
        fast(x, fmt, saturate=saturate, stats=compiled_stats)
        assert compiled_stats.counts() == eager_stats.counts() and eager_stats.counts()["overflow"] > 0


def test_compiled_stochastic_rounding_is_unbiased_reproducible_and_neighbour_only():
    # Traced, the random bits come from a keyed counter hash (random_bits.py): check it is as
    # good as the generator's own: only neighbours, unbiased within 6 sigma, seeded.
    n = 200_000
    for name in ("e4m3", "e0m7", "e7m0", "bf16"):
        fmt = get_format(name)
        fast = compiled(lambda x, fmt: quantize(x, fmt, "stochastic"))
        grid = fmt.grid()
        lo, hi = grid[len(grid) // 2 + 3], grid[len(grid) // 2 + 4]
        x = torch.full((n,), float(lo + 0.3 * (hi - lo)))
        torch.manual_seed(5)
        q = fast(x, fmt)
        assert ((q == lo) | (q == hi)).all(), name
        assert abs(q.double().mean().item() - x[0].item()) < 6 * math.sqrt(0.3 * 0.7 / n) * float(hi - lo), name
        torch.manual_seed(5)
        assert torch.equal(fast(x, fmt), q)
        assert not torch.equal(fast(x, fmt), q)  # the next call draws new keys
    # with an explicit generator (one graph break, to draw the keys): seeded, and unbiased
    with_generator = torch.compile(lambda x, g: quantize(x, "e4m3", "stochastic", generator=g))
    x = torch.randn(n)
    a, b = (with_generator(x, torch.Generator().manual_seed(9)) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, with_generator(x, torch.Generator().manual_seed(10)))
    lower = quantize(x, "e4m3")  # a and its RNE neighbour differ by at most one step
    assert ((a - lower).abs() <= get_format("e4m3").ulp(x.abs()) * 1.0001).all()


def test_one_compiled_quantize_serves_every_format():
    # Traced, the per-format constants must be trace-time constants (per_format_constants):
    # one compiled function that has seen two formats otherwise fails on symbolic ints.
    torch._dynamo.reset()
    fast = torch.compile(quantize, fullgraph=True)
    x = torch.randn(4096) * 8
    for name in ("e4m3", "e5m2", "e3m4", "e7m0", "bf16"):
        assert bits_equal(fast(x, name).numpy(), quantize(x, name).numpy()).all(), name


def test_per_format_constants_are_marked_as_torch_marks_a_constant_result():
    # Importing altgrad must not import torch._dynamo (~1 s per process): the mark is set
    # without it. It must be exactly what torch.compiler.assume_constant_result sets.
    reference = torch.compiler.assume_constant_result(lambda fmt: 0)
    marks = vars(reference)
    derived = per_format_constants(lambda fmt: fmt.bits)
    assert marks and {k: getattr(derived, k, None) for k in marks} == marks
    assert derived(get_format("e4m3")) == 8
    code = "import sys, altgrad.nn, altgrad.optim; print('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_signed_zero_nan_and_saturation():
    x = torch.tensor([-0.0, 0.0, -1e-30, math.nan, 1e9, -math.inf])
    q = quantize(x, "e4m3")
    assert torch.signbit(q[0]) and not torch.signbit(q[1]) and torch.signbit(q[2]) and q[2] == 0
    assert math.isnan(q[3]) and q[4] == 448 and q[5] == -448


@pytest.mark.parametrize("counted_by", ["float sum", "count_nonzero"])
def test_telemetry_counts_match_a_hand_count(counted_by, monkeypatch):
    # eager counts are float32 sums below 2^24 elements (exact there), count_nonzero above
    if counted_by == "count_nonzero":
        monkeypatch.setattr(quantize_module, "_FLOAT_SUM_EXACT", 1)
    assert torch.ones(2**24 - 1).sum().item() == 2**24 - 1  # the premise, at its limit
    fmt = get_format("e4m3")  # min subnormal 2^-9, min normal 2^-6, max 448
    x = torch.tensor([0.0, 1.0, 2.0**-11, -(2.0**-8), 500.0, -1e4, math.inf, math.nan, 2.0**-7, 450.0])
    # underflow: 2^-11 -> 0 (1). subnormal results: -2^-8, 2^-7 (2). overflow, inputs beyond
    # ±448: 500, -1e4, inf, and 450 although it rounds to 448 (4). non-finite: inf, nan (2).
    stats = QuantStats(histogram=True)
    quantize(x, fmt, stats=stats)
    assert stats.counts() == {"total": 10, "overflow": 4, "underflow": 1, "subnormal": 2, "nonfinite": 2}
    assert stats.histogram.sum() == 10 and stats.histogram[0x7E] == 3 and stats.histogram[0xFE] == 1  # 450, 500, inf -> 448; -1e4 -> -448
    quantize(x, fmt, "stochastic", stats=stats)  # counts accumulate across calls
    assert stats.counts()["overflow"] == 8
    rates = stats.rates()
    assert rates["overflow_rate"] == pytest.approx(0.4)
    for saturate in (True, False):  # unsigned: negative inputs are out of range (-> 0 or NaN), not underflow
        s = QuantStats()
        quantize(torch.tensor([-2.0, -math.inf, 4.0, 0.0, 2.0**-130, 3e38]), "e8m0", saturate=saturate, stats=s)
        assert s.counts() == {"total": 6, "overflow": 3, "underflow": 1, "subnormal": 0, "nonfinite": 1}, saturate
    for name in ("bf16", "e8m0"):  # the bit-pattern path counts the same way
        s = QuantStats()
        quantize(torch.tensor([1.0, math.nan, 0.0, 3e38, 1e-45]), name, stats=s)
        assert s.counts()["nonfinite"] == 1 and s.counts()["total"] == 5


def test_format_validation_and_registry_errors():
    with pytest.raises(ValueError, match="valid formats: bf16, e5m2"):
        get_format("e9m9")
    with pytest.raises(ValueError, match="at most 16"):
        FloatFormat(8, 8)
    with pytest.raises(ValueError, match="non-negative"):
        FloatFormat(-1, 3)
    with pytest.raises(ValueError, match="no finite non-zero"):
        FloatFormat(1, 0, specials="ieee")
    assert FloatFormat(4, 3, bias=7, specials="fn") == get_format("e4m3")


def test_ulp_is_the_local_grid_step():
    fmt = get_format("e4m3")
    assert torch.equal(fmt.ulp(torch.tensor([1.0, 1.9, 2.0, 448.0, 0.0, 2.0**-8])),
                       torch.tensor([0.125, 0.125, 0.25, 32.0, 2.0**-9, 2.0**-9]))
    assert torch.equal(get_format("e0m7").ulp(torch.tensor([0.9, 0.01])), torch.full((2,), 1 / 128))


def expected_scale(fmt, amax, margin=0, pow2=False):
    """The scale the scaling module promises for a float32 `amax`, by exact arithmetic:
    max / (amax * 2^margin) rounded once to float32 (a float64 quotient of float32 values
    rounds to the same float32), clamped to [2^-126, 2^126]; pow2: the power of two at or below."""
    quotient = min(max(fmt.max_value / (amax * 2.0**margin), 2.0**-126), 2.0**126)
    scale = float(np.float32(quotient))
    return 2.0 ** (math.frexp(scale)[1] - 1) if pow2 else scale


def with_amax(amax):
    """A small tensor whose amax is `amax` (a float32 value), with a zero and a negative."""
    return torch.tensor([amax / 2, -amax, 0.0])


BELOW_EIGHT = float(np.nextafter(np.float32(8.0), np.float32(0)))  # float32 log2 rounds it to 3
JUST_ABOVE_3_5 = float(np.nextafter(np.float32(3.5), np.float32(4)))  # 448 / it is just below 128
# amaxes from tiny (far below e4m3's smallest value 2^-9, which the scale must still map
# to 448) through float32 subnormals (scale clamped at 2^126) to huge
AMAXES = [3.0, 3.5, JUST_ABOVE_3_5, BELOW_EIGHT, 1000.0, 3 * 2.0**-40, 1e-6, 2.0**-10, 1e-40, 3e38]


@pytest.mark.parametrize("pow2", [False, True])
@pytest.mark.parametrize("margin", [0, 2])
def test_current_scale_is_max_over_amax_for_every_finite_nonzero_amax(pow2, margin):
    fmt = get_format("e4m3")
    scaling = CurrentScaling(fmt, margin=margin, pow2=pow2)
    for amax in AMAXES:
        assert scaling.scale(with_amax(amax)).item() == expected_scale(fmt, amax, margin, pow2), amax
    # nothing to go by: scale 1
    for x in (torch.zeros(16), torch.tensor([1.0, math.inf]), torch.tensor([math.nan, 2.0])):
        assert scaling.scale(x).item() == 1.0
    e0m7 = get_format("e0m7")  # max 127/128: a huge amax hits the lower clamp
    assert CurrentScaling(e0m7, pow2=pow2).scale(with_amax(3e38)).item() == 2.0**-126
    assert CurrentScaling(e0m7, pow2=pow2).scale(with_amax(1.0)).item() == expected_scale(e0m7, 1.0, 0, pow2)
    # every binade of float32 (subnormals included), at random mantissas
    bits = np.random.default_rng(margin).integers(1, 0x7F800000, size=2000, dtype=np.int64).astype(np.int32)
    for amax in bits.view(np.float32).tolist():
        assert scaling.scale(torch.tensor([amax])).item() == expected_scale(fmt, amax, margin, pow2), amax


def test_scale_examples_and_a_std_1e_7_tensor_that_survives():
    # the same promise written out for a few amaxes, so the helper above cannot hide a slip
    e4m3 = get_format("e4m3")
    assert CurrentScaling(e4m3).scale(with_amax(3.5)).item() == 128.0
    assert CurrentScaling(e4m3, pow2=True).scale(with_amax(3.0)).item() == 128.0  # 149.3 -> 128
    assert CurrentScaling(e4m3, pow2=True).scale(with_amax(JUST_ABOVE_3_5)).item() == 64.0  # 127.99998 -> 64
    assert CurrentScaling(e4m3, margin=2, pow2=True).scale(with_amax(3.0)).item() == 32.0  # 37.3 -> 32
    assert CurrentScaling(e4m3, pow2=True).scale(with_amax(3 * 2.0**-40)).item() == 2.0**47
    assert CurrentScaling(e4m3).scale(with_amax(1e-40)).item() == 2.0**126
    # a std-1e-7 tensor is mapped onto the format instead of underflowing to zero
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 1e-7
    for name in ("e5m2", "e4m3"):
        y = scaled_quantize(x, name, CurrentScaling(name, pow2=True))
        assert (y != 0).float().mean() > 0.99 and torch.allclose(y, x, rtol=2**-2, atol=0)


@pytest.mark.parametrize("pow2", [False, True])
def test_delayed_scale_is_max_over_the_history_amax(pow2):
    fmt = get_format("e4m3")

    def scale(amax):
        return expected_scale(fmt, amax, 0, pow2)

    for algo in ("max", "most_recent"):
        s = DelayedScaling(fmt, history_len=3, algo=algo, pow2=pow2)
        assert s.scale(with_amax(1e-6)).item() == scale(1e-6)  # first call: its own amax, however tiny
        assert s.current.item() == scale(1e-6)
        assert s.scale(with_amax(3.0)).item() == scale(1e-6)  # later calls: the history's
        assert s.current.item() == scale(3.0)
        assert s.scale(with_amax(2.0**-10)).item() == scale(3.0)
        assert s.current.item() == (scale(3.0) if algo == "max" else scale(2.0**-10))
        assert s.scale(torch.zeros(4)).item() == s.current.item()  # amax 0: nothing new
        assert s.current.item() == (scale(3.0) if algo == "max" else scale(2.0**-10))  # previous kept
        s.scale(with_amax(2.0**-12))
        s.scale(with_amax(2.0**-12))  # amax 3 has left the history (length 3)
        assert s.current.item() == scale(2.0**-12)
        s.scale(torch.tensor([1.0, math.nan]))
        assert s.current.item() == scale(2.0**-12)  # a NaN amax keeps the previous scale
    first_zero = DelayedScaling(fmt, pow2=pow2)
    assert first_zero.scale(torch.zeros(4)).item() == 1.0 and first_zero.current.item() == 1.0


@pytest.mark.parametrize("algo", ["max", "most_recent"])
def test_delayed_peek_is_the_next_scale_and_records_nothing(algo):
    # peek is what scale would return, without the history, the counter or the scale changing:
    # before the first call (the tensor's own amax, also a NaN or zero one), after it, and after
    # a resume from a state saved either side of the first call.
    fmt = get_format("e4m3")
    inputs = [torch.tensor([1.0, math.nan]), torch.zeros(3), with_amax(1e-6), with_amax(3.0), with_amax(2.0**-10)]
    for start in range(len(inputs)):
        s = DelayedScaling(fmt, history_len=3, algo=algo, pow2=True)
        for x in inputs[start:]:
            state = s.state_dict()
            resumed = DelayedScaling(fmt, history_len=3, algo=algo, pow2=True)
            resumed.load_state_dict(state)
            peeked, peeked_resumed = s.peek(x * 7), resumed.peek(x * 7)
            for k, v in s.state_dict().items():
                torch.testing.assert_close(v, state[k], rtol=0, atol=0, equal_nan=True)
            assert torch.equal(peeked, s.scale(x * 7)) and torch.equal(peeked_resumed, resumed.scale(x * 7))


def test_delayed_scaling_round_trips_its_state():
    s = DelayedScaling("e4m3", history_len=4, algo="max")
    s.scale(torch.tensor([2.0]))
    s.scale(torch.tensor([8.0]))
    state = s.state_dict()
    fresh = DelayedScaling("e4m3", history_len=4)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.amax_history, state["amax_history"])
    assert fresh.scale(torch.tensor([1.0])).item() == 448 / 8
    with pytest.raises(ValueError, match="history length"):
        DelayedScaling("e4m3", history_len=8).load_state_dict(state)


def test_block_scaling_is_mx_with_power_of_two_scales():
    x = torch.zeros(2, 102)
    x[0, :32] = torch.linspace(-3, 3, 32)  # amax 3 -> X = 1 - 8 (e4m3 emax 8) -> multiplier 2^7
    x[1, 32:64] = 1e-30  # X = -100 - 8: the block is mapped up, not left to underflow
    x[1, 64] = math.inf
    x[0, 64:96] = BELOW_EIGHT  # floor(log2(8 - ulp)) = 2, not 3: X = -6, multiplier 2^6
    x[0, 96:] = 1e-40  # last block, zero-padded: X = -133 - 8, clamped to E8M0's -127
    scaling = BlockScaling("e4m3")
    s = scaling.scale(x)
    assert s.shape == (2, 4, 1)
    assert s[:, :, 0].tolist() == [[2.0**7, 1.0, 2.0**6, 2.0**127], [1.0, 2.0**108, 1.0, 1.0]]  # zero / inf: 1
    y = scaled_quantize(x, "e4m3", scaling)
    assert y.shape == x.shape
    blocks, multipliers = x[0, :96].reshape(3, 32), s[0, :3]
    assert torch.equal(y[0, :96], (quantize(blocks * multipliers, "e4m3") / multipliers).reshape(-1))
    assert torch.equal(y[1, 32:64], torch.full((32,), 320 * 2.0**-108))  # 1e-30 * 2^108 = 324.5 -> 320


def test_straight_through_gradients():
    x = torch.tensor([0.3, -2.0, 1000.0], requires_grad=True)
    fake_quantize(x, "e4m3").sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
    x.grad = None
    fake_quantize(x, "e4m3", clip=True).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 0.0]))  # 1000 saturated at 448
    q = torch.tensor([4.0, 8.0], requires_grad=True)
    dequantize(q, torch.tensor(4.0)).sum().backward()
    assert torch.equal(q.grad, torch.full((2,), 0.25))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    x = torch.from_numpy(probe_values(get_format("e4m3")))
    for name in FORMAT_NAMES:
        assert bits_equal(quantize(x.cuda(), name).cpu().numpy(), quantize(x, name).numpy()).all()
    a = quantize(x.cuda(), "e4m3", "stochastic", generator=torch.Generator("cuda").manual_seed(3))
    b = quantize(x.cuda(), "e4m3", "stochastic", generator=torch.Generator("cuda").manual_seed(3))
    assert bits_equal(a.cpu().numpy(), b.cpu().numpy()).all()
