"""Inputs and gradients of the selective-scan tests, shared by every backend's tests."""

from __future__ import annotations

import torch

from mambamixer.ops import selective_scan

GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def make_inputs(batch, d_inner, length, d_state, groups=None, with_D=True, with_z=True, dtype=torch.float32,
                seed=0):  # fmt: skip
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    A = (-torch.exp(torch.randn(d_inner, d_state, generator=g, dtype=torch.float64) * 0.5)).to(dtype)
    return dict(
        u=rnd(batch, d_inner, length),
        delta=rnd(batch, d_inner, length, scale=0.5),
        A=A.requires_grad_(),
        B=rnd(*bc_shape),
        C=rnd(*bc_shape),
        D=rnd(d_inner) if with_D else None,
        z=rnd(batch, d_inner, length) if with_z else None,
        delta_bias=rnd(d_inner, scale=0.1),
    )


def run_scan(backend, inputs, **kw):
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=backend, **kw)
    return out, last


def scan_grads(out, last, inputs, seed=1, with_last=True):
    """Gradients of every given input of a random linear function of out (and of the last state)."""
    g = torch.Generator().manual_seed(seed)
    gout = torch.randn(out.shape, generator=g).to(out.dtype).to(out.device)
    glast = torch.randn(last.shape, generator=g).to(last.dtype).to(last.device)
    loss = (out * gout).sum() + (last * glast).sum() * with_last
    params = [inputs[k] for k in GRAD_NAMES if inputs[k] is not None]
    return torch.autograd.grad(loss, params)


def token_major(inputs, strided_z=False):
    """The same numbers with u, delta and z lying token-major in memory ((batch, length, d) transposed),
    z optionally a strided view (the first half of the columns of a wider tensor, as the mixers' chunked
    projection)."""
    out = dict(inputs)
    for name in ("u", "delta", "z"):
        if inputs[name] is None:
            continue
        rows = inputs[name].detach().transpose(1, 2)  # (batch, length, d)
        if name == "z" and strided_z:
            rows = torch.cat([rows, torch.zeros_like(rows)], dim=-1)[..., : rows.shape[-1]]
        else:
            rows = rows.contiguous()
        out[name] = rows.transpose(1, 2).requires_grad_()
    return out


def scan_inputs(batch, d_inner, length, d_state, groups=None, with_D=True, with_z=True, with_bias=True,
                softplus=True, dtype=torch.float32, seed=0) -> dict:  # fmt: skip
    """``make_inputs`` with groups None, an int, or (B groups, C groups), delta_bias optional, and
    delta > 0 when there is no softplus."""
    b_groups, c_groups = groups if isinstance(groups, tuple) else (groups, groups)
    inputs = make_inputs(batch, d_inner, length, d_state, b_groups, with_D, with_z, dtype, seed)
    if c_groups != b_groups:
        inputs["C"] = make_inputs(batch, d_inner, length, d_state, c_groups, dtype=dtype, seed=seed + 1)["C"]
    if not with_bias:
        inputs["delta_bias"] = None
    if not softplus:
        inputs["delta"] = inputs["delta"].detach().abs().requires_grad_()
    return inputs


# The option grid of a fused backend, each axis with every value somewhere, not the full product:
# batch, d_inner, length, d_state, groups, D, z, delta_bias, softplus, reverse. Lengths past one
# chunk of 64 steps (70, 129, 300) end inside a chunk.
OPTION_CASES = [
    (2, 4, 1, 16, None, True, True, True, True, False),
    (2, 4, 1, 4, 2, False, False, False, False, True),
    (2, 4, 7, 1, None, True, False, True, True, True),
    (1, 3, 7, 64, None, False, True, False, True, False),
    (1, 6, 64, 4, 3, False, True, True, True, False),
    (1, 4, 64, 16, None, True, False, True, False, True),
    (1, 4, 129, 16, 2, True, True, False, False, True),
    (1, 2, 70, 64, None, True, True, True, True, False),
    (1, 2, 300, 4, None, True, True, True, True, False),
    (1, 2, 300, 16, None, False, False, True, True, True),
    (1, 8, 33, 16, (4, 2), True, True, True, True, True),  # B and C grouped differently
    (1, 4, 20, 16, (None, 2), True, False, True, True, False),  # B shared, C grouped
]


def option_case_id(case) -> str:
    return "b{}-d{}-l{}-n{}-g{}-D{}-z{}-bias{}-sp{}-rev{}".format(*case)


def assert_matches_reference(inputs: dict, backend: str, device: str = "cpu", rtol: float = 1e-4,
                             grad_rtol: float = 2e-4, **options) -> None:  # fmt: skip
    """``backend`` on ``device`` against the CPU reference: output, last state, and the gradient of
    every input through both (dtypes and shapes those of the inputs)."""
    moved = {k: (v.detach().to(device).requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = selective_scan(**moved, return_last_state=True, backend=backend, **options)
    ref_out, ref_last = selective_scan(**inputs, return_last_state=True, backend="reference", **options)
    assert out.dtype == inputs["u"].dtype and out.shape == ref_out.shape
    torch.testing.assert_close(out.cpu(), ref_out, rtol=rtol, atol=rtol)
    torch.testing.assert_close(last.cpu(), ref_last, rtol=rtol, atol=rtol)
    names = [k for k in GRAD_NAMES if inputs[k] is not None]
    pairs = zip(names, scan_grads(out, last, moved), scan_grads(ref_out, ref_last, inputs), strict=True)
    for name, got, want in pairs:
        assert got.dtype == inputs[name].dtype and got.shape == inputs[name].shape
        torch.testing.assert_close(got.cpu(), want, rtol=grad_rtol, atol=grad_rtol,
                                   msg=lambda m, n=name: f"grad {n}: {m}")  # fmt: skip
