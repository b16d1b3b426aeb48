"""GridOptim's fused move on CPU: grid_move.c, built with the system C compiler at first use.

torch.compile fuses the move into one loop on any device, but its CPU code generator turns
each float<->int bit cast (three per weight) into a scalar store/convert/load, so the compiled
move cost 1.9x an AdamW step on CPU. grid_move.c is the same move written as one C loop that
the C compiler vectorises: bit-identical to move_on_grid fed the same keys (tested), ~3x
faster. On a GPU, Triton has no such problem and GridOptim uses torch.compile there.

The shared library is built once per machine and compiler into altgrad's cache
(altgrad.files.cache_dir), named by a hash of the source, flags, compiler and CPU, with the
C compiler in $CC, else cc (torch.compile on CPU needs one too).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from altgrad.files import atomic_write, cache_dir
from altgrad.quantization import FloatFormat
from altgrad.quantization.formats import per_format_constants

from .geometry import _layout, index_range

SOURCE = Path(__file__).with_name("grid_move.c")
# -ffp-contract=off: every float op rounds on its own, as torch's ops do (bit-identity);
# -fno-trapping-math lets nearbyintf/floorf vectorise (nothing here reads FP exception flags).
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-fopenmp", "-shared", "-fPIC"]


class _Layout(ctypes.Structure):
    _fields_ = [(name, ctypes.c_float) for name in (
        "min_normal", "inv_min_normal", "subnormal_step", "man_scale", "step_scale", "inv_step_scale", "top", "bottom")
    ] + [("min_normal_bits", ctypes.c_int32), ("is_signed", ctypes.c_int)]


@per_format_constants
def _c_layout(fmt: FloatFormat) -> _Layout:
    layout, (bottom, top) = _layout(fmt), index_range(fmt)
    return _Layout(layout.min_normal, layout.inv_min_normal, layout.min_normal * layout.ulp_of_binade,
                   2.0**fmt.man_bits, 2.0**layout.step_bits, 2.0**-layout.step_bits, top, bottom,
                   layout.min_normal_bits, int(fmt.signed))


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and feature flags (Linux), else the machine."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.machine() + platform.processor()


@functools.cache
def library() -> ctypes.CDLL:
    compiler = os.environ.get("CC", "cc")
    how_to_fix = ("GridOptim(compile=True) builds its CPU move from C at first use: install a C compiler "
                  "with OpenMP (e.g. gcc) or point CC at one, or run with train.compile: false")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"C compiler {compiler!r} not found. {how_to_fix}")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, compiler, version, _cpu_identity()]).encode())
    built = cache_dir() / f"grid_move-{key.hexdigest()[:16]}.so"
    if not built.exists():
        atomic_write(built, lambda partial: _build(compiler, partial, how_to_fix))  # parallel jobs may build at once
    lib = ctypes.CDLL(str(built))
    lib.grid_move.restype = None
    lib.grid_move.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(_Layout), ctypes.c_void_p, ctypes.c_int,
    ]
    return lib


def _build(compiler: str, output: Path, how_to_fix: str) -> None:
    result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(output)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building {SOURCE.name} with {compiler!r} failed (exit {result.returncode}):\n"
                           f"{result.stderr.strip()}\n{how_to_fix}")


_UNIT_SCALE = torch.ones(1)


def fits(p: torch.Tensor, buf: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor | None) -> bool:
    """Whether move_on_grid_cpu takes these tensors: float32, contiguous, on the CPU, with one
    scale (or none) or one scale per entry."""
    tensors = [p, buf, grad] if scale is None else [p, buf, grad, scale]
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
            and (scale is None or scale.numel() == 1 or scale.shape == p.shape))


def move_on_grid_cpu(p: torch.Tensor, buf: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor | None,
                     hyper: torch.Tensor, keys: torch.Tensor, fmt: FloatFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """grid_optim.move_on_grid for tensors that `fits` accepts, with `keys` from draw_key as its
    source: the same result bit for bit, and (attempted, flips) as int64 scalars."""
    scale = _UNIT_SCALE if scale is None else scale
    hyper, counts = hyper.float().contiguous(), torch.zeros(2, dtype=torch.int64)
    key0, key1 = keys.tolist()
    library().grid_move(
        p.data_ptr(), buf.data_ptr(), grad.data_ptr(), p.numel(), scale.data_ptr(), int(scale.numel() > 1),
        hyper.data_ptr(), key0, key1, _c_layout(fmt), counts.data_ptr(), torch.get_num_threads(),
    )
    return counts[0], counts[1]
