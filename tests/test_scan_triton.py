"""The triton backend against the reference on CPU tensors, under Triton's interpreter.

Triton interprets its kernels (numpy runs the same kernel code on CPU tensors) when
``TRITON_INTERPRET=1`` is set before triton is imported; ``conftest.py`` sets it at session start
on machines without CUDA. With CUDA the kernels are compiled instead and these tests skip:
``tests/test_cuda.py`` runs the same option grid on CUDA tensors. The interpreter takes about
1 ms per program and time step, so the sizes are tiny and the grid covers every axis (lengths
1 to 300, d_state 1 to 64, both directions, every optional input, shared and grouped B/C)
without the full product.

Without triton these tests skip, except ``test_triton_is_installed_when_required``: CI exports
``MAMBAMIXER_REQUIRE_TRITON=1`` (``.ci/run``), so a CI without triton fails instead of skipping.
"""

from __future__ import annotations

import os

import pytest
import torch
from scan_helpers import GRAD_NAMES, OPTION_CASES, assert_matches_reference, option_case_id, scan_inputs, token_major

import mambamixer.ops.scan as scan_module
import mambamixer.ops.scan_triton as scan_triton
from mambamixer import create_model
from mambamixer.ops import available_backends, selective_scan
from mambamixer.ops.scan import BACKEND_ENV

interpreted = pytest.mark.skipif(not scan_triton.triton_interpreted(),
                                 reason="needs triton, run by its interpreter (TRITON_INTERPRET=1 before import)")


def test_triton_is_installed_when_required():
    if os.environ.get("MAMBAMIXER_REQUIRE_TRITON") != "1":
        pytest.skip("MAMBAMIXER_REQUIRE_TRITON is not set (CI sets it)")
    assert scan_triton.triton_available(), "install the triton extra: pip install -e '.[dev,triton]'"
    assert torch.cuda.is_available() or scan_triton.triton_interpreted(), "TRITON_INTERPRET=1 was not set in time"


@interpreted
@pytest.mark.parametrize("case", OPTION_CASES, ids=option_case_id)
def test_triton_matches_reference_float32(case):
    batch, d_inner, length, d_state, groups, with_D, with_z, with_bias, softplus, reverse = case
    inputs = scan_inputs(batch, d_inner, length, d_state, groups, with_D, with_z, with_bias, softplus)
    assert_matches_reference(inputs, "triton", delta_softplus=softplus, reverse=reverse)


@interpreted
def test_triton_float64_matches_reference_exactly():
    inputs = scan_inputs(2, 4, 40, 8, groups=2, dtype=torch.float64)
    assert_matches_reference(inputs, "triton", rtol=1e-10, grad_rtol=1e-9, delta_softplus=True)


@interpreted
def test_triton_float64_gradcheck():
    inputs = scan_inputs(1, 2, 5, 3, groups=2, dtype=torch.float64)
    names = [k for k in GRAD_NAMES if inputs[k] is not None]

    def fn(*tensors):
        kw = dict(zip(names, tensors, strict=True))
        return selective_scan(**kw, delta_softplus=True, return_last_state=True, reverse=True, backend="triton")

    assert torch.autograd.gradcheck(fn, [inputs[k] for k in names], eps=1e-6, atol=1e-6, fast_mode=True)


@interpreted
@pytest.mark.parametrize("dtype, length", [(torch.bfloat16, 50), (torch.float16, 70)], ids=["bfloat16", "float16"])
def test_triton_half_precision_inputs(dtype, length):
    """Half-precision inputs, float32 states: against the reference on the same inputs (it upcasts too)."""
    inputs = scan_inputs(1, 4, length, 16, dtype=dtype)
    assert_matches_reference(inputs, "triton", rtol=2e-2, grad_rtol=5e-2, delta_softplus=True, reverse=length == 70)


@interpreted
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_reads_token_major_inputs_in_place(reverse):
    """u token-major in memory (as the mixers produce it), z a strided chunk of a wider tensor: the same
    values and gradients, and the output comes back token-major."""
    inputs = scan_inputs(1, 8, 37, 4, groups=2)
    tm = token_major(inputs, strided_z=True)
    assert_matches_reference(tm, "triton", delta_softplus=True, reverse=reverse)  # the reference reads any layout
    with torch.no_grad():
        assert selective_scan(**tm, delta_softplus=True, reverse=reverse, backend="triton").stride(1) == 1


@interpreted
def test_triton_blocks_of_a_group_and_persistent_backward_programs(monkeypatch):
    """Several channel blocks per group, the last one cut short (5 channels in blocks of 2), and fewer
    backward programs than (batch, block) items, each taking several in turn."""
    monkeypatch.setattr(scan_triton, "MAX_BLOCK_D", 2)
    monkeypatch.setattr(scan_triton, "_backward_programs", lambda items, device: 2)
    assert_matches_reference(scan_inputs(1, 5, 70, 4), "triton", delta_softplus=True, reverse=True)


@interpreted
def test_triton_gradients_of_the_last_state_or_the_output_alone():
    """A loss of the last state alone (no output gradient reaches the op), and of the output alone."""
    inputs = scan_inputs(1, 4, 20, 4)
    names = [k for k in GRAD_NAMES if inputs[k] is not None]
    results = [selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=b)
               for b in ("triton", "reference")]  # fmt: skip
    for pick in (lambda out, last: last.square().sum(), lambda out, last: out.square().sum()):
        got, want = (torch.autograd.grad(pick(*r), [inputs[k] for k in names], retain_graph=True, allow_unused=True,
                                         materialize_grads=True) for r in results)  # fmt: skip
        for name, g, w in zip(names, got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=2e-4, atol=2e-4, msg=lambda m, n=name: f"grad {n}: {m}")


@interpreted
def test_triton_without_gradients_returns_the_last_state():
    inputs = {k: (v.detach() if v is not None else None) for k, v in scan_inputs(2, 4, 70, 4).items()}
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend="triton")
    ref_out, ref_last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend="reference")
    assert out.grad_fn is None
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, ref_last, rtol=1e-4, atol=1e-4)


@interpreted
def test_triton_dispatch_and_env_override(monkeypatch):
    """On CPU tensors triton is listed last, under the interpreter only; the env variable forces it,
    and it takes ``reverse`` itself (no flipped copies)."""
    assert available_backends("cpu")[-1] == "triton"
    calls = []
    original = scan_triton.selective_scan_triton
    monkeypatch.setitem(scan_module.BACKENDS, "triton", lambda *a, **kw: calls.append(kw) or original(*a, **kw))
    monkeypatch.setenv(BACKEND_ENV, "triton")
    inputs = scan_inputs(1, 2, 5, 2)
    selective_scan(**inputs, reverse=True)
    assert calls == [{"reverse": True}]
    monkeypatch.setattr(scan_triton.kernels, "INTERPRETED", False)  # compiled kernels: CUDA tensors only
    assert "triton" not in available_backends("cpu")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        selective_scan(**inputs)


def test_triton_is_dispatched_on_cuda_after_mamba_ssm(monkeypatch):
    monkeypatch.setattr(scan_module, "triton_available", lambda: True)
    monkeypatch.setattr(scan_module, "cuda_available", lambda: False)
    assert available_backends("cuda") == ["triton", "chunked", "reference"]
    monkeypatch.setattr(scan_module, "cuda_available", lambda: True)
    assert available_backends("cuda") == ["cuda", "triton", "chunked", "reference"]


def test_triton_missing_raises_the_install_hint(monkeypatch):
    monkeypatch.setattr(scan_triton, "kernels", None)
    assert "triton" not in available_backends("cuda") and "triton" not in available_backends("cpu")
    with pytest.raises(RuntimeError, match=r"pip install 'mambamixer\[triton\]'"):
        selective_scan(**scan_inputs(1, 2, 5, 2), backend="triton")


@interpreted
def test_triton_in_a_model_matches_cpu_fused(monkeypatch):
    """A whole TSM2 (its mixers' token-major, gated and reversed scans) gives the fused CPU kernel's output
    and parameter gradients with every scan on triton."""
    torch.manual_seed(0)
    model = create_model("tsm2", seq_len=32, horizon=8, n_vars=3, d_model=8).eval()  # eval: no dropout
    x = torch.randn(2, 32, 3)
    results = []
    for backend in ("triton", "cpu_fused"):
        monkeypatch.setenv(BACKEND_ENV, backend)
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out, grads), (want, want_grads) = results
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    assert grads.keys() == want_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], want_grads[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")  # fmt: skip
