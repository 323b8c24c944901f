"""The causal depthwise conv1d op: the fused CPU kernel against the reference and F.conv1d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambamixer.ops.causal_conv1d import causal_conv1d, causal_conv1d_ref

# (batch, d, length, kernel): lengths shorter than, equal to and longer than the kernel; d a multiple
# of 16 (SIMD vectors) or not (the scalar loop)
CASES = [(2, 6, 1, 4), (3, 5, 4, 4), (2, 64, 7, 4), (1, 16, 33, 3), (2, 3, 9, 1)]


def _inputs(batch, d, length, kernel, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d, length, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = torch.randn(d, kernel, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return x, w, b


@pytest.mark.parametrize("length", [1, 2, 9])
def test_reference_matches_left_padded_conv1d(length):
    x, w, b = _inputs(2, 6, length, 4)
    expected = F.conv1d(F.pad(x, (3, 0)), w[:, None, :], b, groups=6)
    torch.testing.assert_close(causal_conv1d_ref(x, w, b), expected)
    torch.testing.assert_close(causal_conv1d_ref(x.transpose(1, 2), w, b, time_dim=1), expected.transpose(1, 2))
    torch.testing.assert_close(causal_conv1d_ref(x, w, b, "silu"), F.silu(expected))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("token_major", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_matches_reference_values_and_gradients(case, token_major, reverse, activation, with_bias):
    x, w, b = _inputs(*case)
    b = b if with_bias else None
    if token_major:  # a strided view, as the chunk of the mixers' input projection
        x = torch.cat([x.detach().transpose(1, 2), torch.randn_like(x.detach().transpose(1, 2))], dim=-1)
        x = x[..., : case[1]].requires_grad_()
    time_dim = 1 if token_major else -1
    leaves = [t for t in (x, w, b) if t is not None]
    outs, grads = [], []
    for backend in ("cpu_fused", "reference"):
        out = causal_conv1d(x, w, b, activation, time_dim=time_dim, reverse=reverse, backend=backend)
        gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        outs.append(out)
        grads.append(torch.autograd.grad((out * gout).sum(), leaves))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for fused, ref in zip(*grads, strict=True):
        torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("token_major", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("d", [5, 16])  # the scalar loop, and SIMD vectors of 16 channels
def test_fused_gradcheck_float64(token_major, reverse, d):
    x, w, b = _inputs(2, d, 6, 4, dtype=torch.float64)
    if token_major:
        x = x.detach().transpose(1, 2).contiguous().requires_grad_()
    time_dim = 1 if token_major else -1
    assert torch.autograd.gradcheck(
        lambda x, w, b: causal_conv1d(x, w, b, "silu", time_dim=time_dim, reverse=reverse, backend="cpu_fused"),
        (x, w, b),
    )


def test_reverse_is_the_conv_run_right_to_left():
    x, w, b = _inputs(2, 16, 9, 4)
    for backend in ("cpu_fused", "reference"):
        torch.testing.assert_close(causal_conv1d(x, w, b, "silu", reverse=True, backend=backend),
                                   causal_conv1d(x.flip(-1), w, b, "silu", backend=backend).flip(-1))  # fmt: skip
        # output 2 sees inputs 2 .. 2 + kernel - 1 only
        out = causal_conv1d(x, w, b, reverse=True, backend=backend)
        (grad,) = torch.autograd.grad(out[..., 2].sum(), x)
        assert grad[..., :2].abs().sum() == 0 and grad[..., 6:].abs().sum() == 0
        assert (grad[..., 2:6].abs().sum(dim=(0, 1)) > 0).all()


def test_fused_keeps_the_dtype_of_bfloat16_inputs():
    x, w, b = (t.detach().bfloat16() for t in _inputs(2, 16, 9, 4))
    out = causal_conv1d(x, w, b, "silu", backend="cpu_fused")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), causal_conv1d_ref(x.float(), w.float(), b.float(), "silu"),
                               rtol=2e-2, atol=2e-2)  # fmt: skip


def test_fused_takes_strided_or_expanded_bias_and_promotes_dtypes_as_the_reference():
    x, w, _ = _inputs(2, 16, 9, 4)
    for bias in (torch.randn(32)[::2], torch.full((1,), 0.3).expand(16)):
        torch.testing.assert_close(causal_conv1d(x, w, bias, "silu", backend="cpu_fused"),
                                   causal_conv1d_ref(x, w, bias, "silu"))  # fmt: skip
    fused = causal_conv1d(x, w.double(), None, backend="cpu_fused")
    reference = causal_conv1d_ref(x, w.double(), None)
    assert fused.dtype == reference.dtype == torch.float64
    torch.testing.assert_close(fused, reference)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(x=torch.randn(2, 6, 5, 1)), "x must be"),
        (dict(w=torch.randn(5, 4)), "weight must have shape"),
        (dict(b=torch.randn(5)), "bias must have shape"),
        (dict(activation="relu"), "activation must be"),
        (dict(time_dim=0), "time_dim"),
        (dict(x=torch.ones(2, 6, 5, dtype=torch.int64)), "floating-point"),
        (dict(backend="cuda"), "backend must be"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, message):
    args = dict(x=torch.randn(2, 6, 5), w=torch.randn(6, 4), b=torch.randn(6), activation=None, time_dim=-1)
    backend = kwargs.pop("backend", None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        causal_conv1d(args["x"], args["w"], args["b"], args["activation"], time_dim=args["time_dim"], backend=backend)
