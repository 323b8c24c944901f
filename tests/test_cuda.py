"""The CUDA paths: every scan backend for CUDA tensors, every model, and both commands on a GPU.

Skipped without a CUDA device (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
With ``mamba_ssm`` importable the ``cuda`` backend is checked too, with ``triton`` importable the
``triton`` backend (compiled: the option grid of ``tests/test_scan_triton.py``, which runs it
under Triton's interpreter on CPU), and ``chunked`` always.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from scan_helpers import OPTION_CASES, assert_matches_reference, option_case_id, scan_grads
from scan_helpers import scan_inputs as option_inputs

from mambamixer import create_model, list_models
from mambamixer.ops import selective_scan
from mambamixer.ops.scan_cuda import cuda_available
from mambamixer.ops.scan_triton import triton_available
from mambamixer.tasks.classify import build_vision_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GPU_BACKENDS = ["cuda"] * cuda_available() + ["triton"] * triton_available() + ["chunked"]
needs_triton = pytest.mark.skipif(not triton_available(), reason="needs triton")


@pytest.fixture(autouse=True)
def exact_float32():
    """cuDNN convolutions default to TF32 (10-bit mantissa): turn it off so fp32 is compared with fp32."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def scan_inputs(batch=2, d_inner=6, length=37, d_state=5, groups=None, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    return {
        "u": torch.randn(batch, d_inner, length, generator=g),
        "delta": torch.randn(batch, d_inner, length, generator=g) * 0.5,
        "A": -torch.rand(d_inner, d_state, generator=g) * 2 - 0.1,
        "B": torch.randn(*bc_shape, generator=g),
        "C": torch.randn(*bc_shape, generator=g),
        "D": torch.randn(d_inner, generator=g),
        "z": torch.randn(batch, d_inner, length, generator=g),
        "delta_bias": torch.randn(d_inner, generator=g) * 0.1,
    }


def scan_with_grads(inputs: dict, device: str, backend: str, reverse: bool) -> tuple[torch.Tensor, list]:
    leaves = {k: v.detach().to(device).requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=True, reverse=reverse, backend=backend)
    weight = torch.linspace(-1, 1, out.numel(), device=device).reshape(out.shape)
    (out * weight).sum().backward()
    return out.detach().cpu(), [leaves[k].grad.cpu() for k in inputs]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reversed"])
@pytest.mark.parametrize("groups", [None, 2], ids=["shared-BC", "grouped-BC"])
def test_gpu_scan_matches_the_cpu_reference(backend, reverse, groups):
    inputs = scan_inputs(groups=groups)
    want_out, want_grads = scan_with_grads(inputs, "cpu", "reference", reverse)
    got_out, got_grads = scan_with_grads(inputs, "cuda", backend, reverse)
    torch.testing.assert_close(got_out, want_out, rtol=1e-4, atol=1e-4)
    for name, got, want in zip(inputs, got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3, msg=lambda m, n=name: f"grad of {n}: {m}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_scan_last_state_and_bfloat16(backend):
    inputs = scan_inputs(length=64)
    want, want_last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend="reference")
    cuda = {k: v.cuda() for k, v in inputs.items()}
    got, got_last = selective_scan(**cuda, delta_softplus=True, return_last_state=True, backend=backend)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_last.cpu(), want_last, rtol=1e-4, atol=1e-4)
    # bfloat16 activations (A, D and the biases stay float32, as under autocast): close to float32
    half = {k: (v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v) for k, v in cuda.items()}
    low = selective_scan(**half, delta_softplus=True, backend=backend)
    assert low.dtype == torch.bfloat16
    assert (low.float().cpu() - want).abs().max() <= 0.05 * want.abs().max()


@needs_triton
@pytest.mark.parametrize("case", OPTION_CASES, ids=option_case_id)
def test_gpu_triton_matches_the_cpu_reference_over_the_option_grid(case):
    batch, d_inner, length, d_state, groups, with_D, with_z, with_bias, softplus, reverse = case
    inputs = option_inputs(batch, d_inner, length, d_state, groups, with_D, with_z, with_bias, softplus)
    assert_matches_reference(inputs, "triton", "cuda", rtol=2e-4, grad_rtol=1e-3, delta_softplus=softplus,
                             reverse=reverse)  # fmt: skip


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_gpu_triton_other_dtypes(dtype):
    inputs = option_inputs(2, 8, 150, 16, groups=2, dtype=dtype)
    tol = (1e-9, 1e-8) if dtype == torch.float64 else (2e-2, 5e-2)
    assert_matches_reference(inputs, "triton", "cuda", rtol=tol[0], grad_rtol=tol[1], delta_softplus=True, reverse=True)


@needs_triton
def test_gpu_triton_at_model_sizes_and_token_major_layout():
    """A vision mixer's call: many sequences, 4 stacked orders (groups), u token-major; and a
    long sequence with 2 blocks per group, against the chunked backend on the GPU (float32)."""
    for batch, d_inner, length, d_state, groups in ((32, 128, 196, 4, 4), (2, 256, 3000, 16, None)):
        inputs = option_inputs(batch, d_inner, length, d_state, groups)
        cuda = {k: v.detach().cuda() for k, v in inputs.items()}
        cuda["u"] = cuda["u"].transpose(1, 2).contiguous().transpose(1, 2)
        cuda = {k: v.requires_grad_() for k, v in cuda.items()}
        results = [selective_scan(**cuda, delta_softplus=True, return_last_state=True, backend=b)
                   for b in ("triton", "chunked")]  # fmt: skip
        torch.testing.assert_close(results[0][0], results[1][0], rtol=2e-4, atol=2e-4)
        for got, want in zip(scan_grads(*results[0], cuda), scan_grads(*results[1], cuda), strict=True):
            torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


@needs_triton
@pytest.mark.skipif(not cuda_available(), reason="needs mamba_ssm")
@pytest.mark.parametrize("groups, reverse", [(None, False), (2, True)])
def test_gpu_triton_matches_mamba_ssm(groups, reverse):
    """Against mamba_ssm's kernel (which gives no gradient to the last state)."""
    inputs = {k: v.detach().cuda().requires_grad_() for k, v in option_inputs(4, 64, 700, 16, groups).items()}
    results = [selective_scan(**inputs, delta_softplus=True, return_last_state=True, reverse=reverse, backend=b)
               for b in ("triton", "cuda")]  # fmt: skip
    for got, want in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4)
    grads = [scan_grads(*r, inputs, with_last=False) for r in results]
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


def model_cases() -> list[tuple[str, dict, tuple[int, ...]]]:
    """(name, overrides, input shape) for every family at a size a test can afford."""
    vision = [(name, {}, (2, 1, 32, 32))
              for name in ("vim2_femto", "viqs_femto", "mambaout_femto", "simba_nano", "resnet_test", "vit_test")]
    vision.append(("vim2_femto", {"switch_of_scans": True}, (2, 1, 32, 32)))
    forecast = [(name, {"seq_len": 96, "horizon": 24, "n_vars": 7}, (2, 96, 7)) for name in list_models(task="forecast")
                if name != "tsm2_512"]  # fmt: skip
    forecast.append(("tsm2_512", {"horizon": 24, "n_vars": 7, "d_model": 16, "stride": 16}, (2, 512, 7)))
    return vision + forecast


def build(name: str, overrides: dict, shape: tuple[int, ...]) -> torch.nn.Module:
    if len(shape) == 4:  # vision: the small-image configuration that `classify` builds for this size
        return build_vision_model(name, num_classes=10, in_chans=shape[1], img_size=shape[-1], overrides=overrides)
    return create_model(name, **overrides)


@pytest.mark.parametrize("name, overrides, shape", model_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_model_computes_the_same_on_gpu_as_on_cpu(name, overrides, shape):
    torch.manual_seed(0)
    cpu_model = build(name, overrides, shape).eval()  # eval: no dropout, BatchNorm on running stats
    gpu_model = copy.deepcopy(cpu_model).cuda()
    x = torch.randn(*shape)
    outs, grads = [], []
    for model, inp in ((cpu_model, x), (gpu_model, x.cuda())):
        out = model(inp)
        out.square().mean().backward()
        outs.append(out.detach().cpu())
        grads.append({n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[1], outs[0], rtol=2e-4, atol=2e-4)
    assert grads[1].keys() == grads[0].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=2e-3, atol=2e-4, msg=lambda m, n=n: f"{n}: {m}")


def test_bfloat16_autocast_training_step_on_gpu():
    torch.manual_seed(0)
    model = create_model("vim2_femto", num_classes=10, in_chans=1).cuda()
    x, y = torch.randn(8, 1, 28, 28, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    with torch.no_grad():
        want = model(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = model(x)
        loss = torch.nn.functional.cross_entropy(got, y)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max() + 0.05


def run_cli(*args: str, launcher: tuple[str, ...] = ("-m", "mambamixer")) -> None:
    cmd = [sys.executable, *launcher, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # a hung NCCL launch fails, not stalls
    assert result.returncode == 0, result.stderr[-3000:]


def test_forecast_command_trains_on_gpu_and_its_checkpoint_reproduces_the_metrics(tmp_path):
    from mambamixer.tasks.forecast import evaluate_forecast

    out = tmp_path / "run"
    run_cli("forecast", "--model", "tsm2", "--data", "ETTh1", "--horizon", "24", "--epochs", "1", "--set",
            "d_model=16", "--out", str(out), "--quiet")  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["device"].startswith("cuda") and metrics["test_mse"] < 1.0
    again = evaluate_forecast(out)
    assert again["test_mse"] == pytest.approx(metrics["test_mse"], rel=1e-4)


def test_classify_command_trains_on_gpu_under_torchrun_with_nccl(tmp_path):
    """One process under torchrun takes the NCCL path (process group, DDP wrapper, all-reduces)."""
    out = tmp_path / "run"
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "mambamixer")
    run_cli("classify", "--model", "vit_test", "--data", "digits", "--epochs", "8", "--lr", "3e-3", "--warmup-epochs",
            "0", "--bf16", "--out", str(out), "--quiet", launcher=launcher)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["device"].startswith("cuda") and metrics["run"]["processes"] == 1
    assert metrics["test_top1"] > 0.4  # chance is 0.1; 0.59 on the CPU with this recipe
