"""The GPU paths against the CPU ones. Every test here skips on a machine without CUDA (CI has none); they run when a
device machine is lent (see the README's GPU section).

- the fused memory ops on CUDA equal the CPU specification (ops/naive.py) in float64, and the fused CPU path in fp32;
- the diagonal schedule on CUDA equals the sequential one within 1e-5 (fp32), as on CPU;
- a StreamingForecaster on CUDA (a fleet, a ragged arrival, save on CUDA and load on CPU) equals one on CPU;
- bf16 autocast on CUDA stays finite and keeps the memory in fp32;
- a compiled stream (`compile=True`) on CUDA equals the eager CPU stream to fp32 rounding.
"""

import numpy as np
import pytest
import torch

from armt_ts import ARMT, ARMTConfig
from armt_ts.config import ForecasterConfig, HeadConfig, PatchConfig
from armt_ts.forecaster import ARMTForecaster
from armt_ts.ops import fused, naive
from armt_ts.schedule import run_diagonal, run_sequential
from armt_ts.stream import StreamingForecaster
from armt_ts.testing import assert_close
from test_ops import _write_inputs  # the CPU tests' inputs (float64, one beta per head)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 means fp32: TF32 matmuls (10-bit mantissa) would be a different precision from the CPU reference."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("first", [True, False])
def test_fused_ops_on_cuda_equal_the_cpu_specification(first):
    cpu = _write_inputs()
    gpu = [t.cuda() for t in cpu]
    A_ref, z_ref = naive.delta_write(*cpu, first=first)
    A_gpu, z_gpu = fused.delta_write(*gpu, first=first)
    assert_close("A", A_ref, A_gpu.cpu(), 1e-12)
    assert_close("z", z_ref, z_gpu.cpu(), 1e-12)
    q = naive.dpfp(torch.randn(3, 7, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert_close("read", naive.associative_read(q, A_ref, z_ref), fused.associative_read(q.cuda(), A_gpu, z_gpu).cpu(),
                 1e-12)
    x = torch.randn(2, 3, 2, 5, dtype=torch.float64)
    assert_close("dpfp", naive.dpfp(x, 3), fused.dpfp(x.cuda(), 3).cpu(), 1e-12)
    # the deferred write applied in place (a streaming fleet's update) on the device
    k, v, beta, A, z = gpu
    A1, z1 = A.clone(), z.clone()
    with torch.no_grad():
        fused.apply_delta_(A1, z1, fused.delta_terms(k, v, beta, A, z, first))
    assert torch.equal(A1, A_gpu) and torch.equal(z1, z_gpu)


def _model(seed=0) -> ARMT:
    torch.manual_seed(seed)
    model = ARMT(ARMTConfig(d_model=32, n_heads=2, d_ff=64, segment_length=6, num_mem_tokens=3, d_mem=8)).eval()
    with torch.no_grad():  # W_v = 0 (the init) would make every read add exactly 0
        for mem in model.memories:
            mem.W_v.weight.normal_(std=0.05)
    return model


def test_diagonal_schedule_on_cuda_equals_sequential_and_cpu():
    model = _model()
    x = torch.randn(3, 6 * 9 + 4, 32)
    with torch.no_grad():
        y_cpu, s_cpu = run_sequential(model, x, None)
        model.cuda()
        y_seq, s_seq = run_sequential(model, x.cuda(), None)
        y_diag, s_diag = run_diagonal(model, x.cuda(), None)
    assert_close("diagonal vs sequential (cuda)", y_seq, y_diag, 1e-5)
    for l in range(model.config.n_layers):
        assert_close(f"A[{l}] diagonal vs sequential (cuda)", s_seq.A[l], s_diag.A[l], 1e-5)
    assert_close("cuda vs cpu", y_cpu, y_seq.cpu(), 1e-4)
    assert_close("cuda vs cpu A[-1]", s_cpu.A[-1], s_seq.A[-1].cpu(), 1e-4)


def test_bf16_autocast_on_cuda_keeps_fp32_memory():
    model = _model().cuda()
    x = torch.randn(2, 30, 32, device="cuda")
    with torch.no_grad():
        y_ref, s_ref = model(x)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            y, s = model(x)
    assert torch.isfinite(y).all()
    assert all(a.dtype == torch.float32 for a in s.A) and all(z.dtype == torch.float32 for z in s.z)
    assert_close("bf16 outputs", y_ref, y.float(), 0.1)


def _forecaster(seed=0) -> ARMTForecaster:
    torch.manual_seed(seed)
    armt = ARMTConfig(d_model=32, n_heads=2, d_ff=64, segment_length=6, num_mem_tokens=2, d_mem=8)
    cfg = ForecasterConfig.build(horizon=5, n_channels=2, armt=armt, patch=PatchConfig(patch_len=4, stride=3),
                                 head=HeadConfig(kind="quantile"), scaling="std")
    model = ARMTForecaster(cfg).eval()
    with torch.no_grad():
        for mem in model.backbone.memories:
            mem.W_v.weight.normal_(std=0.05)
    return model


def test_streaming_fleet_on_cuda_equals_cpu_and_restores_on_cpu(tmp_path):
    streams = {}
    for device in ("cpu", "cuda"):
        sf = StreamingForecaster(_forecaster(), entities=["a", "b", "c"], device=device)
        rng = np.random.default_rng(1)
        for step in range(40):  # a fleet with ragged arrival: every entity a different block each call
            who = [e for e in ("a", "b", "c") if rng.random() < 0.8] or ["a"]
            L = int(rng.integers(1, 4))
            x = rng.normal(size=(len(who), L, 2)).astype(np.float32) * 3 + 10
            m = rng.random(size=(len(who), L, 2)) > 0.2
            sf.push(x, m, entities=who)
        streams[device] = sf
    cpu, gpu = streams["cpu"], streams["cuda"]
    f_cpu, f_gpu = cpu.forecast(), gpu.forecast()
    assert gpu.state.memory.A[0].is_cuda
    assert_close("point", f_cpu.point, f_gpu.point.cpu(), 1e-4)
    assert_close("quantiles", f_cpu.quantiles, f_gpu.quantiles.cpu(), 1e-4)
    for l in range(cpu.state.memory.num_layers):
        assert_close(f"A[{l}]", cpu.state.memory.A[l], gpu.state.memory.A[l].cpu(), 1e-4)
    # saved from the GPU, loaded on the CPU: bit-identical state, forecasts equal to the CPU stream's
    path = tmp_path / "fleet.state"
    gpu.save(path)
    restored = StreamingForecaster.load(path, _forecaster(), device="cpu")
    for l in range(cpu.state.memory.num_layers):
        assert torch.equal(restored.state.memory.A[l], gpu.state.memory.A[l].cpu())
    for name in ("buf_values", "buf_observed", "fill", "steps"):
        assert torch.equal(getattr(restored.state, name), getattr(gpu.state, name).cpu()), name
    assert_close("restored on cpu vs cuda", gpu.forecast().quantiles.cpu(), restored.forecast().quantiles, 1e-4)


def _cpu_and_cuda_streams(seed, forecast_every=0, **cuda_options):
    """A fleet of three fed the same 60 single-step pushes on the CPU (the defaults) and on CUDA (``cuda_options``),
    with a forecast every ``forecast_every`` steps (mostly between segment ends: a memory read) -> (cpu, cuda)."""
    streams = []
    for device, options in (("cpu", {}), ("cuda", cuda_options)):
        sf = StreamingForecaster(_forecaster(), entities=["a", "b", "c"], device=device, **options)
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(3, 60, 2)).astype(np.float32) * 3 + 10
        for step in range(60):
            sf.push(x[:, step], entities=["a", "b", "c"])
            if forecast_every and step % forecast_every == 3:
                sf.forecast()
        streams.append(sf)
    return tuple(streams)


def test_bf16_stream_on_cuda_stays_near_the_fp32_cpu_stream():
    # StreamingForecaster(bf16=True) on CUDA: attention also runs in bf16 there (only CPU autocast keeps it fp32);
    # the state stays fp32 and the forecasts within bf16 rounding of the fp32 CPU stream's
    cpu, gpu = _cpu_and_cuda_streams(2, bf16=True)
    assert all(a.dtype == torch.float32 and a.is_cuda for a in gpu.state.memory.A)
    assert_close("bf16 cuda point", cpu.forecast().point, gpu.forecast().point.cpu(), 0.05)
    assert_close("bf16 cuda A[-1]", cpu.state.memory.A[-1], gpu.state.memory.A[-1].cpu(), 0.05)


def test_compiled_stream_on_cuda_equals_the_eager_cpu_stream():
    # StreamingForecaster(compile=True) on CUDA (inductor's GPU kernels): the compiled update and memory read ran,
    # and the forecasts and the state agree with the eager CPU stream's to fp32 rounding
    cpu, gpu = _cpu_and_cuda_streams(3, forecast_every=7, compile=True)
    assert set(gpu._compiled) == {"update", "read"}
    assert_close("compiled cuda quantiles", cpu.forecast().quantiles, gpu.forecast().quantiles.cpu(), 1e-4)
    for l in range(cpu.state.memory.num_layers):
        assert_close(f"compiled cuda A[{l}]", cpu.state.memory.A[l], gpu.state.memory.A[l].cpu(), 1e-4)
