"""EinFFT against the same operator written with explicit DFT matrices (float64, no FFT)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mambamixer.layers.einfft import EinFFT


def dft_matrix(n: int) -> torch.Tensor:
    """Orthonormal DFT: F[k, t] = exp(-2 pi i k t / n) / sqrt(n), complex128 (n, n)."""
    k = torch.arange(n, dtype=torch.float64)
    return torch.exp(-2j * math.pi * torch.outer(k, k) / n) / math.sqrt(n)


def block_diagonal(param: torch.Tensor) -> torch.Tensor:
    """(2, blocks, size, size) real/imag weights -> the full (dim, dim) complex block-diagonal matrix."""
    return torch.block_diag(*(torch.complex(param[0, k], param[1, k]) for k in range(param.shape[1])))


def einfft_by_matrices(layer: EinFFT, x: torch.Tensor) -> torch.Tensor:
    """The EinFFT operator with every transform an explicit matrix product; x (batch, length, dim) float64."""
    length, blocks = x.shape[1], layer.num_blocks
    tokens = dft_matrix(length)
    z = torch.einsum("kt,btd->bkd", tokens, x.to(torch.complex128))
    if layer.fft_over_blocks:  # the released code's variant: also a DFT across the channel blocks
        z = torch.einsum("jk,bnkd->bnjd", dft_matrix(blocks), z.unflatten(-1, (blocks, -1))).flatten(-2)
    bias_1 = torch.complex(*layer.bias_1.double()).flatten() if layer.bias_1 is not None else 0
    bias_2 = torch.complex(*layer.bias_2.double()).flatten() if layer.bias_2 is not None else 0
    z = z @ block_diagonal(layer.weight_1.double()) + bias_1
    act = {"relu": F.relu, "gelu": F.gelu}[layer.activation]
    z = torch.complex(act(z.real), act(z.imag))
    z = z @ block_diagonal(layer.weight_2.double()) + bias_2
    lam = layer.sparsity_threshold
    z = torch.complex(F.softshrink(z.real, lam), F.softshrink(z.imag, lam))
    if layer.fft_over_blocks:  # the orthonormal DFT matrix is symmetric and unitary: its inverse is its conjugate
        z = torch.einsum("jk,bnkd->bnjd", dft_matrix(blocks).conj(), z.unflatten(-1, (blocks, -1))).flatten(-2)
    return torch.einsum("tk,bkd->btd", tokens.conj(), z).real


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"fft_over_blocks": True}, {"bias": False}, {"activation": "gelu", "num_blocks": 2},
     {"num_blocks": 1, "sparsity_threshold": 0.0}, {"num_blocks": 8}],
)  # fmt: skip
@pytest.mark.parametrize("length", [1, 5, 12])
def test_matches_explicit_dft_computation(kwargs, length):
    torch.manual_seed(0)
    layer = EinFFT(16, init_scale=0.3, **kwargs).double()  # larger weights: the nonlinearities matter
    x = torch.randn(3, length, 16, dtype=torch.float64)
    expected = einfft_by_matrices(layer, x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


def test_float32_shapes_dtypes_and_gradients():
    torch.manual_seed(0)
    layer = EinFFT(32)
    x = torch.randn(2, 10, 32, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in layer.parameters())
    assert layer(x.detach().bfloat16()).dtype == torch.bfloat16  # computed in float32, returned in the input dtype


def test_soft_shrinkage_changes_the_output():
    torch.manual_seed(0)
    layer = EinFFT(16, sparsity_threshold=0.05).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    shrunk = layer(x)
    layer.sparsity_threshold = 0.0
    assert not torch.allclose(shrunk, layer(x))


def test_large_threshold_gives_exact_zeros():
    layer = EinFFT(8, num_blocks=2, sparsity_threshold=1e3)
    assert torch.count_nonzero(layer(torch.randn(2, 6, 8))) == 0


def test_parameter_count_is_block_diagonal():
    layer = EinFFT(64, num_blocks=4)  # two complex (4 blocks of 16x16) matrices and two complex biases
    assert sum(p.numel() for p in layer.parameters()) == 2 * (2 * 4 * 16 * 16 + 2 * 64)
    assert EinFFT(64, num_blocks=4, bias=False).bias_1 is None


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible by num_blocks"):
        EinFFT(30, num_blocks=4)
    with pytest.raises(ValueError, match="unknown EinFFT activation"):
        EinFFT(16, activation="tanh")
    with pytest.raises(ValueError, match=r"expects \(batch, length, dim=16\)"):
        EinFFT(16)(torch.randn(2, 5, 12))
