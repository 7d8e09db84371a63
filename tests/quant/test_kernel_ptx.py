"""The Triton kernels compile for a GPU (sm_90) and their PTX keeps the eager path's arithmetic.

Compiled ahead of time, so no GPU is needed, only Triton (with its bundled ptxas). What the
interpreter cannot show is checked in the PTX: the divisions are IEEE with subnormals kept
(Triton's `tl.math.div_rn` compiles to `div.rn.ftz.f32`, which flushed 1 / scale to 0 for
scales above 2^126), no float multiply-add is contracted (it would round once where eager
rounds twice), and the multi-tensor kernels load and store full blocks in 16-byte vectors.
Skipped without Triton and under TRITON_INTERPRET=1 (the kernels are built for the
interpreter then).
"""
from __future__ import annotations

import os
import re

import pytest
import torch

from quant import fused_multi_quantize, fused_quantize

triton = fused_quantize.triton
RUNS = triton is not None and os.environ.get("TRITON_INTERPRET") != "1"
# Where a GPU is present, `pytest -m gpu` (benchmarks/gpu_check.sh) runs these with its Triton.
MARKS = [pytest.mark.gpu] if torch.cuda.is_available() else []
pytestmark = [pytest.mark.skipif(not RUNS, reason="needs Triton (not its interpreter)"), *MARKS]

ALIGNED = [["tt.divisibility", 16]]  # what Triton assumes of a pointer that torch allocated


def _ptx(fn, signature: dict[str, str], constexprs: dict, pointer_count: int, fp_fusion: bool) -> str:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                       attrs={(i,): ALIGNED for i in range(pointer_count)})
    options = {} if fp_fusion else {"enable_fp_fusion": False}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]


def _float_fused_ops(ptx: str) -> list[str]:
    """Every float multiply-add (fma.rn.f32, fma.rn.ftz.f32, fma.rn.f16x2, mad.f32, ...)."""
    return re.findall(r"\b(?:fma|mad)\.[a-z.]*\b(?:f32|f16|bf16|f16x2|bf16x2)\b", ptx)


def _divisions(ptx: str) -> list[str]:
    return re.findall(r"\bdiv\.[a-z.]*f32\b", ptx)


def _half_conversions(ptx: str) -> list[str]:
    """Every float32 -> fp16/bf16 conversion, scalar or packed (cvt.rn.bf16x2.f32, ...)."""
    return re.findall(r"\bcvt\.[a-z.]*\b(?:f16|bf16|f16x2|bf16x2)\.f32\b", ptx)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_multi_tensor_kernels(dtype: str) -> None:
    import triton.language as tl

    x_dtype = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}[dtype]
    tables = {"x_ptrs": "*i64", "block_tensor_ptr": "*i32", "block_start_ptr": "*i32", "block_end_ptr": "*i32",
              "block_group_ptr": "*i32"}
    constexprs = {"X_DTYPE": x_dtype, "BLOCK": fused_multi_quantize._BLOCK}
    abs_max = _ptx(fused_multi_quantize._multi_abs_max_kernel, {**tables, "range_bits_ptr": "*i32"}, constexprs, 6,
                   fp_fusion=True)
    assert "atom.global" in abs_max and "ld.global.v4" in abs_max
    quantize = _ptx(fused_multi_quantize._multi_fake_quantize_kernel,
                    {**tables, "range_ptr": "*fp32", "params_ptr": "*i32", "out_ptr": f"*{dtype}",
                     "out_offset_ptr": "*i64"}, constexprs, 9, fp_fusion=False)
    divisions = _divisions(quantize)  # the scale and its reciprocal
    assert divisions and set(divisions) == {"div.rn.f32"}  # never div.rn.ftz.f32, div.full or approx
    assert _float_fused_ops(quantize) == []
    assert "ld.global.v4" in quantize and "st.global.v4" in quantize
    conversions = _half_conversions(quantize)
    if dtype == "fp32":
        assert conversions == []
    else:  # round to nearest even, as torch's .to(), on the vector path and the masked one
        assert conversions and all(c.startswith("cvt.rn.") and ".ftz" not in c for c in conversions), conversions


@pytest.mark.parametrize("per_group", [False, True])
def test_fused_kernel_from_a_range(per_group: bool) -> None:
    signature = {"x_ptr": "*fp32", "scale_ptr": "*fp32", "inv_scale_ptr": "*fp32", "out_ptr": "*fp32",
                 "pass_ptr": "*u8", "n": "i32", "inner": "i32", "fmt_max": "fp32", "lo": "fp32", "hi": "fp32",
                 "step_min_bits": "i32", "step_max_bits": "i32", "man_shift": "i32"}
    ptx = _ptx(fused_quantize._fake_quantize_kernel, signature,
               {"PER_GROUP": per_group, "FROM_RANGE": True, "WRITE_PASS": True, "BLOCK": 1024}, 5, fp_fusion=False)
    divisions = _divisions(ptx)
    assert divisions and set(divisions) == {"div.rn.f32"}  # never div.rn.ftz.f32, div.full or approx
    assert _float_fused_ops(ptx) == []
