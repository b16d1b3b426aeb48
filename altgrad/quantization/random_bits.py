"""Uniform random bits for stochastic rounding, from one generator, eager or compiled.

Eager, the bits come from the generator itself (one 64-bit draw fills two int32 words):
torch's fastest random source on CPU, and the stream CUDA and CPU users expect.

Under torch.compile the compiler cannot fuse a draw from an explicit generator, and its own
CPU random kernel costs more than the rounding it feeds. So, when traced, the bits come from
a keyed counter hash instead: two 32-bit keys drawn from the generator per call, then
mix(mix(i ^ k0) ^ k1) for the flat index i, where mix is a 32-bit xorshift-multiply
avalanche (each step a bijection on 32 bits). It is a handful of integer ops per element that
the compiler fuses into the kernel that uses them. Kept in int64 lanes (values < 2^32,
multipliers < 2^31) so no product overflows. Both sources are uniform and reproducible from
the generator's seed; they are different streams, as torch.compile's own random ops differ
from eager ones. The index wraps at 2^32 elements per call.
"""

from __future__ import annotations

import torch

_WORD = 0xFFFFFFFF
_MULTIPLIERS = (0x7FEB352D, 0x2C1B3C6D)  # odd, below 2^31


def _mix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * _MULTIPLIERS[0]) & _WORD
    h = h ^ (h >> 15)
    h = (h * _MULTIPLIERS[1]) & _WORD
    return h ^ (h >> 16)


def draw_key(generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """Two 32-bit keys for the counter hash, drawn from `generator` (None: the global one)."""
    return torch.randint(0, _WORD + 1, (2,), dtype=torch.int64, generator=generator, device=device)


def random_source(generator: torch.Generator | torch.Tensor | None,
                  device: torch.device) -> torch.Generator | torch.Tensor | None:
    """What `random_bits` draws from: the generator itself when eager; when traced by
    torch.compile, the keys of this call, drawn from it now. Drawing from an explicit
    generator is a graph break, so call this before any other tensor work: then the break
    splits nothing that the compiler could have fused. A function compiled whole takes keys
    from `draw_key` (drawn eagerly by its caller) in place of the generator instead: they
    pass through, and the graph has no break at all."""
    if isinstance(generator, torch.Tensor):
        return generator
    return draw_key(generator, device) if torch.compiler.is_compiling() else generator


def random_bits(out: torch.Tensor, bits: int, source: torch.Generator | torch.Tensor | None) -> torch.Tensor:
    """Uniform random integers in [0, 2^bits), bits <= 31, shaped like the int32 tensor `out`.

    `source` comes from `random_source`. From a generator `out` is filled in place and
    returned; from keys a new tensor is returned (`out` is left alone, and the compiler
    drops it if nothing else reads it).
    """
    mask = (1 << bits) - 1
    if isinstance(source, torch.Tensor):
        index = torch.arange(out.numel(), dtype=torch.int64, device=out.device).view(out.shape) & _WORD
        return (_mix32(_mix32(index ^ source[0]) ^ source[1]) & mask).to(torch.int32)
    if out.numel() % 2 == 0:
        # one 64-bit draw fills two int32 words (the low 31+ bits of each word are uniform): cheaper
        out.view(torch.int64).random_(generator=source)
    else:
        out.random_(generator=source)
    return out.bitwise_and_(mask)


def uniform(like: torch.Tensor, source: torch.Generator | torch.Tensor | None) -> torch.Tensor:
    """Uniform float32 in [0, 1) shaped like `like`, on multiples of 2^-24 (every float32 step
    there), from `source` as in `random_bits`."""
    draws = random_bits(torch.empty(like.shape, dtype=torch.int32, device=like.device), 24, source)
    return draws.to(torch.float32).mul_(2.0**-24)
