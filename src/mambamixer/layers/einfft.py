"""EinFFT: SiMBA's spectral channel mixer (Patro and Agneeswaran, arXiv 2403.15360).

    x (batch, length, dim)
    -> X = FFT over the tokens (orthonormal)              complex (batch, length, blocks, block_size)
    -> H = act(X W1 + b1)       W1: one complex block_size x block_size matrix per channel block
    -> Y = H W2 + b2            (block-diagonal: channels mix only inside their block)
    -> Y = softshrink(Y)        on the real and imaginary parts: small coefficients become exactly 0
    -> y = Re(IFFT over the tokens (Y))                    real (batch, length, dim)

``act`` is applied to the real and imaginary parts separately (ReLU in the released code). The
released code transforms tokens *and* channel blocks (``fft2`` over both axes); that variant is
``fft_over_blocks=True``. The choices are discussed in docs/mambaout_simba.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "identity": lambda t: t}


class EinFFT(nn.Module):
    """Spectral channel mixing: (batch, length, dim) -> (batch, length, dim).

    Weights are stored as real tensors with a leading axis (real, imaginary), as in the
    released code: ``weight_k`` (2, num_blocks, block_size, block_size), ``bias_k``
    (2, num_blocks, block_size).
    """

    def __init__(
        self,
        dim: int,
        num_blocks: int = 4,
        sparsity_threshold: float = 0.01,
        activation: str = "relu",
        bias: bool = True,
        fft_over_blocks: bool = False,
        init_scale: float = 0.02,
    ) -> None:
        super().__init__()
        if num_blocks < 1 or dim % num_blocks:
            raise ValueError(f"EinFFT needs dim ({dim}) divisible by num_blocks ({num_blocks})")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown EinFFT activation {activation!r}; known: {sorted(_ACTIVATIONS)}")
        if sparsity_threshold < 0:
            raise ValueError(f"sparsity_threshold must be >= 0, got {sparsity_threshold}")
        self.dim, self.num_blocks, self.block_size = dim, num_blocks, dim // num_blocks
        self.sparsity_threshold = sparsity_threshold
        self.activation = activation
        self.fft_over_blocks = fft_over_blocks
        shape = (2, num_blocks, self.block_size)
        self.weight_1 = nn.Parameter(torch.randn(*shape, self.block_size) * init_scale)
        self.weight_2 = nn.Parameter(torch.randn(*shape, self.block_size) * init_scale)
        if bias:
            # 2-D and 3-D, so the optimiser would decay them unless told: they are biases.
            self.bias_1 = nn.Parameter(torch.randn(*shape) * init_scale)
            self.bias_2 = nn.Parameter(torch.randn(*shape) * init_scale)
            self.bias_1._no_weight_decay = self.bias_2._no_weight_decay = True
        else:
            self.register_parameter("bias_1", None)
            self.register_parameter("bias_2", None)

    @staticmethod
    def _complex(param: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        return None if param is None else torch.complex(param[0].to(dtype), param[1].to(dtype))

    def _linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """Block-diagonal complex linear map: x (..., num_blocks, block_size) -> same shape."""
        real = x.real.dtype
        y = torch.einsum("...ki,kio->...ko", x, self._complex(weight, real))
        return y if bias is None else y + self._complex(bias, real)

    def forward(self, x: Tensor) -> Tensor:
        """x (batch, length, dim) -> (batch, length, dim)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"EinFFT expects (batch, length, dim={self.dim}), got {tuple(x.shape)}")
        batch, length, _ = x.shape
        # FFTs have no half-precision CPU kernels and lose accuracy in bf16: compute in float32 (float64 stays).
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        z = x.to(work).reshape(batch, length, self.num_blocks, self.block_size)
        dims = (1, 2) if self.fft_over_blocks else (1,)
        z = torch.fft.fftn(z, dim=dims, norm="ortho")
        act = _ACTIVATIONS[self.activation]
        z = self._linear(z, self.weight_1, self.bias_1)
        z = torch.complex(act(z.real), act(z.imag))
        z = self._linear(z, self.weight_2, self.bias_2)
        if self.sparsity_threshold > 0:
            z = torch.view_as_complex(F.softshrink(torch.view_as_real(z), self.sparsity_threshold))
        y = torch.fft.ifftn(z, dim=dims, norm="ortho").real  # the imaginary part is dropped, as the released code does
        return y.reshape(batch, length, self.dim).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_blocks={self.num_blocks}, sparsity_threshold={self.sparsity_threshold}, "
                f"activation={self.activation}, bias={self.bias_1 is not None}, "
                f"fft_over_blocks={self.fft_over_blocks}")
