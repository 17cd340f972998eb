"""Memory ops: the naive reference vs the batched (fused) implementation, and one backbone segment step.

Write + read at K=192 (d_mem 32, DPFP-3), D=128, M=4 memory tokens, batch 64, one memory head; the
read covers one segment's rows (T=16 content + M memory). Median of --repeats timed calls after warm-up.

    python -m benchmarks.ops [--device cpu|cuda] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from armt_ts import ARMT, ARMTConfig
from armt_ts.ops import fused, naive
from armt_ts.peers import RMT
from benchmarks.common import (device_name, git_commit, machine_info, markdown_table, non_negative_int, positive_int,
                               write_results)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn, repeats: int, device: str, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("--repeats", type=positive_int, default=20)
    p.add_argument("--naive-repeats", type=positive_int, default=3, help="the naive path is slow: fewer repeats")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    commit = git_commit()
    dev = args.device
    B, M, N, D, r, H = 64, 4, 20, 128, 32, 1
    K = 6 * r
    k = fused.dpfp(torch.randn(B, M, H, r, device=dev))
    v = torch.randn(B, M, H, D, device=dev)
    beta = torch.rand(B, M, H, 1, device=dev)
    A = torch.randn(B, H, K, D, device=dev) * 0.01
    z = torch.rand(B, H, K, device=dev)
    q = fused.dpfp(torch.randn(B, N, H, r, device=dev))

    rows = []
    with torch.no_grad():
        for impl, ops, reps in (("naive", naive, args.naive_repeats), ("fused", fused, args.repeats)):
            def write_read(ops=ops):
                A2, z2 = ops.delta_write(k, v, beta, A, z, False, 1e-5)
                return ops.associative_read(q, A2, z2, 1e-5)

            rows.append({"op": "write+read", "impl": impl, "seconds": timeit(write_read, reps, dev, warmup=1)})
            rows.append({"op": "write", "impl": impl,
                         "seconds": timeit(lambda ops=ops: ops.delta_write(k, v, beta, A, z, False, 1e-5), reps, dev, warmup=1)})
            rows.append({"op": "read", "impl": impl,
                         "seconds": timeit(lambda ops=ops: ops.associative_read(q, A, z, 1e-5), reps, dev, warmup=1)})

        config = ARMTConfig(d_model=D, n_layers=2, n_heads=4, d_ff=4 * D, segment_length=16, num_mem_tokens=M, d_mem=r)
        x = torch.randn(B, config.segment_length, D, device=dev)
        for impl in ("naive", "fused"):
            model = ARMT(config.replace(ops_backend=impl)).to(dev).eval()
            _, state = model(x)  # a non-empty memory so the step reads as well as writes
            reps = args.naive_repeats if impl == "naive" else args.repeats
            rows.append({"op": "armt_segment_step", "impl": impl,
                         "seconds": timeit(lambda m=model, s=state: m.segment_step(x, s), reps, dev, warmup=1)})
        rmt = RMT(config).to(dev).eval()
        _, mem = rmt(x)
        rows.append({"op": "rmt_segment_step", "impl": "peer", "seconds": timeit(lambda: rmt.segment_step(x, mem), args.repeats, dev)})
        rows.append({"op": "transformer_segment_no_memory", "impl": "peer",
                     "seconds": timeit(lambda: model.forward_without_memory(x), args.repeats, dev)})

    by = {(r_["op"], r_["impl"]): r_["seconds"] for r_ in rows}
    speedups = {op: by[(op, "naive")] / by[(op, "fused")] for op in ("write+read", "write", "read", "armt_segment_step")}
    for row in rows:
        row["us"] = round(row["seconds"] * 1e6, 1)
    payload = {
        "benchmark": "ops", "shapes": {"batch": B, "M": M, "read_rows": N, "D": D, "d_mem": r, "K": K, "memory_heads": H},
        "rows": rows, "speedup_fused_over_naive": speedups, "target": "fused write+read >= 10x faster than naive",
        "seed": args.seed, "git_commit": commit, "machine": machine_info(dev), "args": vars(args),
        "wall_seconds": time.perf_counter() - t_start,
    }
    md = [
        "# Memory ops: naive reference vs fused",
        "",
        f"Command: `python -m benchmarks.ops {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
        "",
        f"Shapes: batch {B}, K={K}, D={D}, M={M}, read rows {N}, one memory head. Median of timed calls "
        f"({args.repeats} fused, {args.naive_repeats} naive) after warm-up, no autograd. Device {dev} "
        f"({payload['machine'].get('device_name', payload['machine'].get('cpu_model', '?'))}, "
        f"{payload['machine']['torch_threads']} threads); commit {payload['git_commit']}; seed {args.seed}; "
        f"wall time {payload['wall_seconds']:.0f} s.",
        "",
        markdown_table(rows, ["op", "impl", "us"]),
        "",
        "Speed-up of fused over naive: " + ", ".join(f"{op} {s:.0f}x" for op, s in speedups.items()),
    ]
    write_results("ops", payload, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
