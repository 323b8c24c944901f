"""Every selective-scan backend against the reference: values and all gradients."""

from __future__ import annotations

import pytest
import torch
from scan_helpers import GRAD_NAMES, make_inputs, run_scan, scan_grads, token_major

from mambamixer.ops import available_backends, selective_scan, selective_scan_ref
from mambamixer.ops.scan import BACKEND_ENV
from mambamixer.ops.scan_reference import selective_scan_reference

FAST_BACKENDS = ["cpu_fused", "chunked"]

CASES = [  # batch, d_inner, length, d_state, groups, with_D, with_z
    (2, 4, 1, 16, None, True, True),
    (2, 4, 7, 1, None, True, False),
    (1, 6, 33, 16, 3, False, True),
    (3, 4, 70, 16, 2, True, True),
    (2, 5, 129, 4, None, False, False),
    # Whole blocks of 16 channels, moved by the fused kernel's transposed tiles, with lengths that
    # end inside a tile: shorter than one (12), 2 tiles + 5, and a second segment of 2 tiles + 12.
    (2, 32, 12, 4, 2, True, True),
    (2, 48, 37, 4, None, True, False),
    (1, 32, 300, 2, 2, True, True),
]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}-d{}-l{}-n{}-g{}-D{}-z{}".format(*c))
@pytest.mark.parametrize("reverse", [False, True])
def test_backend_matches_reference_float32(backend, case, reverse):
    batch, d_inner, length, d_state, groups, with_D, with_z = case
    inputs = make_inputs(batch, d_inner, length, d_state, groups, with_D, with_z)
    ref_out, ref_last = run_scan("reference", inputs, reverse=reverse)
    out, last = run_scan(backend, inputs, reverse=reverse)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, ref_last, rtol=1e-4, atol=1e-4)
    names = [k for k in GRAD_NAMES if inputs[k] is not None]
    pairs = zip(names, scan_grads(out, last, inputs), scan_grads(ref_out, ref_last, inputs), strict=True)
    for name, got, want in pairs:
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}-d{}-l{}-n{}-g{}-D{}-z{}".format(*c))
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_scan_reads_token_major_inputs_in_place(case, reverse):
    """u, delta and z token-major in memory: the fused kernels' row layout gives the reference's values
    and gradients, and the output and input gradients come back token-major."""
    batch, d_inner, length, d_state, groups, with_D, with_z = case
    inputs = make_inputs(batch, d_inner, length, d_state, groups, with_D, with_z)
    tm = token_major(inputs, strided_z=with_z)
    ref_out, ref_last = run_scan("reference", inputs, reverse=reverse)
    out, last = run_scan("cpu_fused", tm, reverse=reverse)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, ref_last, rtol=1e-4, atol=1e-4)
    if length > 1 and d_inner > 1:
        assert out.stride(1) == 1  # token-major like u (reversed: its rows read from the end, nothing flipped)
    names = [k for k in GRAD_NAMES if inputs[k] is not None]
    pairs = zip(names, scan_grads(out, last, tm), scan_grads(ref_out, ref_last, inputs), strict=True)
    for name, got, want in pairs:
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("reverse", [False, True])
def test_fused_scan_with_token_major_u_and_channel_first_delta(reverse):
    """Mixed layouts (a non-selective S6 gives token-major u with channel-first delta): delta is copied
    into u's layout; without the last state asked for, the output alone matches the reference."""
    inputs = make_inputs(2, 32, 12, 4, groups=2)
    tm = token_major(inputs)
    tm["delta"] = inputs["delta"]
    want = selective_scan(**inputs, delta_softplus=True, reverse=reverse, backend="reference")
    got = selective_scan(**tm, delta_softplus=True, reverse=reverse, backend="cpu_fused")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    names = [k for k in GRAD_NAMES if inputs[k] is not None]
    gout = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    grads = [torch.autograd.grad((out * gout).sum(), [d[k] for k in names]) for out, d in ((got, tm), (want, inputs))]
    for name, a, b in zip(names, *grads, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("reverse", [False, True])
def test_fused_scan_token_major_float64_gradcheck(reverse):
    inputs = token_major(make_inputs(2, 4, 6, 3, groups=2, dtype=torch.float64))
    names = [k for k in GRAD_NAMES if inputs[k] is not None]

    def fn(*tensors):
        kw = dict(zip(names, tensors, strict=True))
        return selective_scan(**kw, delta_softplus=True, return_last_state=True, reverse=reverse,
                              backend="cpu_fused")  # fmt: skip

    assert torch.autograd.gradcheck(fn, [inputs[k] for k in names], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("b_groups, c_groups", [(None, 2), (4, 2), (2, None)])
def test_chunked_scan_with_different_group_counts_for_b_and_c(b_groups, c_groups):
    inputs = make_inputs(2, 4, 9, 3, groups=b_groups)
    inputs["C"] = make_inputs(2, 4, 9, 3, groups=c_groups, seed=1)["C"]
    ref_out, ref_last = run_scan("reference", inputs)
    out, last = run_scan("chunked", inputs)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, ref_last, rtol=1e-4, atol=1e-4)
    for got, want in zip(scan_grads(out, last, inputs), scan_grads(ref_out, ref_last, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("groups", [None, 2])
def test_chunked_scan_cuts_a_large_batch_into_pieces(monkeypatch, groups):
    """A chunk over the element budget is scanned piece by piece along the batch, with the same result."""
    import mambamixer.ops.scan_chunked as chunked

    calls = []
    original = chunked._chunk
    monkeypatch.setattr(chunked, "_chunk", lambda *a: calls.append(a[1].shape[0]) or original(*a))
    inputs = make_inputs(7, 4, 20, 8, groups=groups)
    ref_out, ref_last = run_scan("reference", inputs)
    out, last = chunked.selective_scan_chunked(**inputs, delta_softplus=True, return_last_state=True,
                                               chunk_size=8, max_chunk_elements=3 * 4 * 8 * 8)  # fmt: skip
    assert sorted(set(calls)) == [1, 3]  # pieces of 3, 3 and 1 rows, three chunks each
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, ref_last, rtol=1e-4, atol=1e-4)
    for got, want in zip(scan_grads(out, last, inputs), scan_grads(ref_out, ref_last, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("d_inner, length", [(4, 40), (32, 21)])
def test_backend_matches_reference_float64_exactly(backend, d_inner, length):
    inputs = make_inputs(2, d_inner, length, 8, groups=2, dtype=torch.float64)
    ref_out, ref_last = run_scan("reference", inputs)
    out, last = run_scan(backend, inputs)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for got, want in zip(scan_grads(out, last, inputs), scan_grads(ref_out, ref_last, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["reference", "cpu_fused"])
@pytest.mark.parametrize("groups", [None, 2])
def test_gradcheck_float64(backend, groups):
    inputs = make_inputs(2, 4, 6, 3, groups=groups, dtype=torch.float64)
    names = [k for k in GRAD_NAMES if inputs[k] is not None]

    def fn(*tensors):
        kw = dict(zip(names, tensors, strict=True))
        out, last = selective_scan(**kw, delta_softplus=True, return_last_state=True, backend=backend)
        return out, last

    assert torch.autograd.gradcheck(fn, [inputs[k] for k in names], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_bfloat16_inputs(backend):
    inputs = make_inputs(2, 8, 50, 16, dtype=torch.bfloat16)
    out = selective_scan(**inputs, delta_softplus=True, backend=backend)
    ref = selective_scan_ref(**inputs, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    out.float().square().sum().backward()
    assert inputs["u"].grad.dtype == torch.bfloat16 and inputs["A"].grad.dtype == torch.bfloat16
    assert all(torch.isfinite(inputs[k].grad.float()).all() for k in GRAD_NAMES)


def test_without_softplus_or_bias():
    inputs = make_inputs(2, 4, 20, 4)
    inputs["delta_bias"] = None
    inputs["delta"] = inputs["delta"].detach().abs().requires_grad_()
    ref = selective_scan_ref(**inputs)
    for backend in FAST_BACKENDS:
        torch.testing.assert_close(selective_scan(**inputs, backend=backend), ref, rtol=1e-4, atol=1e-4)


def test_reverse_is_flipped_forward_scan():
    inputs = make_inputs(2, 4, 17, 4, with_z=False)
    flipped = {k: (v.flip(-1) if k in ("u", "delta", "B", "C") else v) for k, v in inputs.items()}
    torch.testing.assert_close(
        selective_scan(**inputs, reverse=True, delta_softplus=True),
        selective_scan(**flipped, delta_softplus=True).flip(-1),
    )


def test_long_sequence_stays_finite():
    inputs = make_inputs(1, 4, 16384, 16)
    out = selective_scan(**{k: v.detach() if v is not None else None for k, v in inputs.items()},
                         delta_softplus=True)  # fmt: skip
    assert torch.isfinite(out).all()
    assert out.abs().max() < 1e4


def test_automatic_dispatch_and_env_override(monkeypatch):
    assert available_backends("cpu")[0] == "cpu_fused"
    inputs = make_inputs(1, 2, 5, 2)
    calls = []
    import mambamixer.ops.scan as mod

    def spy(*args):
        calls.append("reference")
        return selective_scan_reference(*args)

    monkeypatch.setitem(mod.BACKENDS, "reference", spy)
    monkeypatch.setenv(BACKEND_ENV, "reference")
    selective_scan(**inputs)
    assert calls == ["reference"]
    monkeypatch.setenv(BACKEND_ENV, "nonsense")
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(**inputs)


def test_unavailable_backends_raise_actionable_errors():
    inputs = make_inputs(1, 2, 5, 2)
    with pytest.raises(ValueError, match="CUDA tensors"):
        selective_scan(**inputs, backend="cuda")


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(u=torch.randn(2, 4)), r"u must have shape \(batch, d_inner, length\)"),
        (dict(delta=torch.randn(2, 4, 9)), r"delta must have shape \(batch, d_inner, length\) = \(2, 4, 10"),
        (dict(A=torch.randn(5, 3)), r"A must have shape \(d_inner, d_state\) = \(4, d_state\)"),
        (dict(B=torch.randn(2, 2, 10)), r"B must have shape \(batch, d_state, length\) = \(2, 3, 10\)"),
        (dict(C=torch.randn(2, 3, 3, 10)), r"C has 3 groups, which must divide d_inner = 4"),
        (dict(C=torch.randn(2, 3)), r"C must have shape"),
        (dict(D=torch.randn(3)), r"D must have shape \(d_inner,\) = \(4,\)"),
        (dict(z=torch.randn(2, 4, 11)), r"z must have shape"),
        (dict(delta_bias=torch.randn(4, 1)), r"delta_bias must have shape"),
        (dict(u=torch.ones(2, 4, 10, dtype=torch.int64)), r"u must be a floating-point tensor"),
        (dict(B=[[1.0]]), r"B must be a torch.Tensor"),
    ],
)
def test_bad_arguments_raise_value_error(change, match):
    args = dict(u=torch.randn(2, 4, 10), delta=torch.rand(2, 4, 10), A=-torch.rand(4, 3), D=torch.randn(4),
                B=torch.randn(2, 3, 10), C=torch.randn(2, 3, 10), z=None, delta_bias=None)  # fmt: skip
    args.update(change)
    with pytest.raises(ValueError, match=match):
        selective_scan(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES[2:4], ids=["grouped-noD", "grouped"])
def test_gpu_backends_match_cpu_reference(case):
    batch, d_inner, length, d_state, groups, with_D, with_z = case
    inputs = make_inputs(batch, d_inner, length, d_state, groups, with_D, with_z)
    ref_out, ref_last = run_scan("reference", inputs)
    ref_grads = scan_grads(ref_out, ref_last, inputs, with_last=False)  # mamba_ssm does not backprop the last state
    cuda_inputs = {k: (v.detach().cuda().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    for backend in available_backends("cuda")[:-1]:  # cuda (when mamba_ssm is installed) and chunked
        out, last = run_scan(backend, cuda_inputs)
        torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-3, atol=1e-3)
        for got, want in zip(scan_grads(out, last, cuda_inputs, with_last=False), ref_grads, strict=True):
            torch.testing.assert_close(got.cpu(), want, rtol=2e-3, atol=2e-3)
