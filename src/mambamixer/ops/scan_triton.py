"""Triton selective scan, forward and backward: fast on a CUDA GPU without ``mamba_ssm``.

Triton compiles the kernels (``scan_triton_kernels``) just in time, so a machine with a CUDA GPU
and the ``triton`` package that PyTorch's CUDA wheels ship needs no compiler. The whole op is
fused: softplus of delta + delta_bias, the scan, the D skip and the SiLU gate of z, forward and
backward. States are computed in float32 (float64 for float64 inputs) whatever the input dtype.

Memory: the forward pass keeps the state at the start of every ``CHUNK`` (64) steps for the
backward pass, a (batch, d_inner, length / 64, d_state) tensor in the compute dtype (a quarter
of u's float32 size at d_state 16), never the (batch, d_inner, length, d_state) states. The
backward pass recomputes one chunk at a time from there into a scratch of CHUNK states per
program, then runs the adjoint recurrence right to left; at most ``PROGRAMS_PER_SM`` programs
per multiprocessor take the (batch, channel block) items in turn, so the scratch stays under
4 * 132 * 64 * 512 float32 (66 MiB on an H100) whatever the input size.

On CPU tensors the kernels run only under Triton's interpreter (numpy executes the same kernel
code; slow, meant for tests), which ``TRITON_INTERPRET=1`` turns on when it is set before triton
is imported (``triton.jit`` chooses between compiling and interpreting as it decorates, for its
own library functions too). ``tests/conftest.py`` sets it on machines without CUDA.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mambamixer.ops.scan_cpu_fused import is_token_major

try:  # optional backend: a None sentinel, and one actionable message when it is asked for
    import triton

    from mambamixer.ops import scan_triton_kernels as kernels
except Exception:  # ImportError, or a broken install
    triton = kernels = None

INSTALL_HINT = (
    "the 'triton' scan backend needs the triton package: pip install 'mambamixer[triton]' (or pip install triton; "
    "PyTorch's CUDA wheels ship it)"
)
CHUNK = 64  # steps between the states saved for the backward pass (shorter sequences: the next power of 2)
PROGRAMS_PER_SM = 4  # backward programs per multiprocessor: bounds the recompute scratch
MAX_TILE = 512  # channels x padded d_state of one program's state tile
MAX_BLOCK_D = 32


def triton_available() -> bool:
    return kernels is not None


def triton_interpreted() -> bool:
    """Whether the kernels run under Triton's interpreter, on CPU tensors (TRITON_INTERPRET=1 at triton's import)."""
    return kernels is not None and kernels.INTERPRETED


def check_triton_device(device: torch.device) -> None:
    """Raise the one-line error that says why the triton backend cannot run on ``device``."""
    if kernels is None:
        raise RuntimeError(INSTALL_HINT)
    if device.type == "cpu" and not triton_interpreted():
        raise ValueError("backend 'triton' runs CPU tensors only under Triton's interpreter: start Python with "
                         "TRITON_INTERPRET=1 (set before triton is imported; slow, for tests), or pass CUDA tensors")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"backend 'triton' needs CUDA tensors, got tensors on {device}")


def _launch_config(d_inner: int, d_state: int, groups: int, length: int) -> dict[str, int]:
    """Block sizes: d_state padded to a power of two, channels per program within one group, chunk length."""
    block_n = triton.next_power_of_2(d_state)
    block_d = min(triton.next_power_of_2(d_inner // groups), max(1, MAX_TILE // block_n), MAX_BLOCK_D)
    chunk = min(CHUNK, triton.next_power_of_2(length))
    warps = 4 if block_d * block_n >= 512 else 2 if block_d * block_n >= 128 else 1
    return dict(BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk, num_warps=warps)


def _backward_programs(items: int, device: torch.device) -> int:
    if device.type != "cuda":
        return items
    return min(items, PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count)


class _TritonScan(torch.autograd.Function):
    """The fused op on prepared tensors: u, delta, z in one layout (strides of u); A contiguous in
    the compute dtype; B, C contiguous (batch, groups, d_state, length); D, delta_bias contiguous.
    Absent tensors are replaced by a used one in the launches (flags tell the kernels): an empty
    CUDA tensor's null pointer would be refused by Triton's launcher."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, want_last):
        batch, d_inner, length = u.shape
        d_state = A.shape[1]
        groups = math.lcm(B.shape[1], C.shape[1])
        cfg = _launch_config(d_inner, d_state, groups, length)
        n_chunks = -(-length // cfg["CHUNK"])
        save = any(ctx.needs_input_grad[:8])
        out = torch.empty_like(u)
        last = A.new_empty(batch, d_inner, d_state) if want_last else A.new_empty(0)
        ckpt = A.new_empty(batch, d_inner, n_chunks, d_state) if save else A.new_empty(0)
        blocks = groups * -(-(d_inner // groups) // cfg["BLOCK_D"])
        kernels.scan_forward_kernel[(batch, blocks)](
            u, delta, A, B, C, D if D is not None else A, z if z is not None else u,
            delta_bias if delta_bias is not None else A, out, last if want_last else A, ckpt if save else A,
            length, d_inner, d_state, d_inner // groups, groups, B.shape[1], C.shape[1], n_chunks, *u.stride(),
            SOFTPLUS=softplus, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            REVERSE=reverse, SAVE=save, WANT_LAST=want_last, **cfg,
        )  # fmt: skip
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.softplus, ctx.reverse = softplus, reverse
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        batch, d_inner, length = u.shape
        d_state = A.shape[1]
        groups = math.lcm(B.shape[1], C.shape[1])
        cfg = _launch_config(d_inner, d_state, groups, length)
        dout = torch.zeros_like(u) if dout is None else _like(dout, u)
        du, ddelta = torch.empty_like(u), torch.empty_like(u, dtype=delta.dtype)
        dz = torch.empty_like(u, dtype=z.dtype) if z is not None else None
        dB, dC = (torch.zeros(M.shape, dtype=A.dtype, device=A.device) for M in (B, C))
        dA = A.new_empty(batch, d_inner, d_state)
        dD = A.new_empty(batch, d_inner) if D is not None else None
        dbias = A.new_empty(batch, d_inner) if delta_bias is not None else None
        items = batch * groups * -(-(d_inner // groups) // cfg["BLOCK_D"])
        programs = _backward_programs(items, u.device)
        scratch = A.new_empty(programs, cfg["CHUNK"] * cfg["BLOCK_D"] * cfg["BLOCK_N"])
        kernels.scan_backward_kernel[(programs,)](
            u, delta, A, B, C, D if D is not None else A, z if z is not None else u,
            delta_bias if delta_bias is not None else A, ckpt, dout, dlast.contiguous() if dlast is not None else A,
            scratch, du, ddelta, dz if dz is not None else du, dA, dB, dC, dD if dD is not None else dA,
            dbias if dbias is not None else dA,
            batch, length, d_inner, d_state, d_inner // groups, groups, B.shape[1], C.shape[1], ckpt.shape[2],
            *u.stride(),
            SOFTPLUS=ctx.softplus, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            REVERSE=ctx.reverse, HAS_DLAST=dlast is not None, **cfg,
        )  # fmt: skip
        dD = dD.sum(0).to(D.dtype) if D is not None else None
        dbias = dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
        return du, ddelta, dA.sum(0), dB.to(B.dtype), dC.to(C.dtype), dD, dz, dbias, None, None, None


def _like(t: Tensor, u: Tensor) -> Tensor:
    """t (batch, d, length) with u's memory layout: token-major when u is, else channel-first contiguous."""
    if is_token_major(u):
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    return t.contiguous()


@torch.compiler.disable  # the kernels are launched from Python: torch.compile runs around this op
def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    reverse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Triton selective scan; the reference's signature, shapes and semantics, plus ``reverse``.

    Computes in float32 (float64 for float64 inputs); bfloat16/float16 inputs are read as they
    are, and the output and the gradients come back in the inputs' dtypes. The last state
    (compute dtype) is differentiable too. u lying token-major in memory (a (batch, length,
    d_inner) tensor seen through ``transpose(1, 2)``) is read in place, and delta and z are
    brought into its layout; ``reverse`` reads and writes the sequences from the end (no flips).
    """
    check_triton_device(u.device)
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    u = _like(u, u)
    out, last = _TritonScan.apply(
        u, _like(delta, u), A.to(compute).contiguous(), B.contiguous(), C.contiguous(),
        D.contiguous() if D is not None else None, _like(z, u) if z is not None else None,
        delta_bias.contiguous() if delta_bias is not None else None, bool(delta_softplus), bool(reverse),
        return_last_state,
    )  # fmt: skip
    return (out, last) if return_last_state else out
