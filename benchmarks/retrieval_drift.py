"""Why does rewrite accuracy fall between 500 and 1000 pairs? Trace a trained ARMT along long streams.

Loads the models saved by ``python -m benchmarks.associative_retrieval --models armt --tasks rewrite
--save-models DIR`` and streams ``--pairs`` rewrite pairs (the paper's format, one pair per segment)
through the backbone segment by segment. At every pair whose key was written before, the model's
prediction at that pair's "sep" is scored against the value the key held (the dense target of
training): accuracy as a function of position, not just at the end. Alongside, per layer and segment:
max |A|, max z, |z| (L2), the read denominator phi(q).z + eps at the sep token, and the size of what
the read adds there, |phi(q)^T A / (phi(q).z + eps)|. Flat curves mean a bounded state; a rising z with
a falling read size means the normaliser is diluting the memory (drift); flat state with falling
accuracy points at key interference.

    python -m benchmarks.retrieval_drift --models /tmp/ar/base --name retrieval_drift
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from armt_ts import ARMT, MemoryState
from benchmarks.associative_retrieval import build, make_tasks, parse_args
from benchmarks.common import (git_commit, machine_info, markdown_table, non_negative_float, non_negative_int,
                               positive_int, result_name, write_results)

BINS = ((1, 50), (51, 150), (151, 500), (501, 1000), (1001, 2000), (2001, 5000))


@torch.no_grad()
def trace(model, task, pairs: int, batch: int, seed: int) -> dict:
    """Stream ``pairs`` pairs for ``batch`` sequences; per-pair correctness and per-segment state stats."""
    backbone: ARMT = model.backbone
    c = backbone.config
    g = torch.Generator().manual_seed(seed)
    body, targets, _, _ = task.sample_queries(batch, pairs, 1, g)
    seg = task.segment_length
    x_all = model.embed(body)
    sep = task.key_size  # position of "sep" inside a segment: its target is the key's previous value
    correct = torch.zeros(batch, pairs)
    scored = torch.zeros(batch, pairs, dtype=torch.bool)
    stats = {k: torch.zeros(c.n_layers, pairs) for k in ("max_abs_A", "max_z", "norm_z", "denominator", "read_size")}
    state = None
    for i in range(pairs):
        x = x_all[:, i * seg : (i + 1) * seg]
        first = state is None
        if first:
            state = MemoryState.zeros(c, batch)
        h = backbone._segment_input(x)
        A, z = list(state.A), list(state.z)
        for l, (block, memory) in enumerate(zip(backbone.blocks, backbone.memories)):
            if not first:
                q = memory._phi(memory.W_q(h[:, sep : sep + 1]).float())  # [B, 1, H, K]
                den = torch.einsum("bnhk,bhk->bnh", q, z[l]) + c.eps
                num = torch.einsum("bnhk,bhkv->bnhv", q, A[l])
                stats["denominator"][l, i] = den.mean()
                stats["read_size"][l, i] = (num / den[..., None]).flatten(2).norm(dim=-1).mean()
                h = memory.read(h, A[l], z[l])
            h = block(h)
            A[l], z[l] = memory.write(h[:, seg:], A[l], z[l], first)
            stats["max_abs_A"][l, i] = A[l].abs().max()
            stats["max_z"][l, i] = z[l].max()
            stats["norm_z"][l, i] = z[l].flatten(1).norm(dim=-1).mean()
        state = MemoryState(tuple(A), tuple(z))
        logits = model.head(backbone.ln_f(h[:, sep]))
        t = targets[:, i * seg + sep]
        scored[:, i] = t != -100
        correct[:, i] = (logits.argmax(-1) == t).float()
    return {"correct": correct, "scored": scored, "stats": stats}


def summarise(name: str, result: dict, pairs: int) -> list[dict]:
    rows = []
    correct, scored, stats = result["correct"], result["scored"], result["stats"]
    for lo, hi in BINS:
        if lo > pairs:
            break
        sl = slice(lo - 1, min(hi, pairs))
        n = scored[:, sl].sum().item()
        row = {"model": name, "pairs_from": lo, "pairs_to": min(hi, pairs),
               "accuracy": round((correct[:, sl] * scored[:, sl]).sum().item() / max(n, 1), 4), "scored": int(n)}
        for key, values in stats.items():
            for l in range(values.shape[0]):
                row[f"{key}_L{l}"] = round(values[l, sl].mean().item(), 4)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, metavar="DIR[=FLAGS]",
                   help="directories written by associative_retrieval --save-models; append '=--mem-tokens 1' "
                   "(etc.) for models trained with non-default flags")
    p.add_argument("--pairs", type=positive_int, default=2000)
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--seed", type=non_negative_int, default=123)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--read-cap", type=non_negative_float, nargs="+", default=[], metavar="CAP",
                   help="intervention: also trace each model with every retrieved vector's norm capped at CAP "
                   "(the models are not retrained)")
    p.add_argument("--name", type=result_name, default="retrieval_drift")
    args = p.parse_args(argv)
    for spec in args.models:  # every model folder before any work
        weights_file = Path(spec.partition("=")[0]) / "rewrite_armt.safetensors"
        if not weights_file.is_file():
            p.error(f"--models {spec}: no {weights_file} (a folder written by associative_retrieval --save-models)")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = []
    for spec in args.models:
        directory, _, flags = spec.partition("=")
        weights = load_file(str(Path(directory) / "rewrite_armt.safetensors"))
        for cap in [None, *args.read_cap]:
            # the cap is an intervention on the same weights (ARMTConfig.read_norm_cap adds no parameters)
            margs = _model_args(flags.split() + ([] if cap is None else ["--read-norm-cap", str(cap)]))
            task = make_tasks(margs)["rewrite"]
            model = build("armt", task, margs)
            model.load_state_dict(weights)
            model.eval()
            label = Path(directory).name + (f" ({flags})" if flags else "") + (
                f" [read norm capped at {cap}]" if cap is not None else "")
            rows += summarise(label, trace(model, task, args.pairs, args.batch, args.seed), args.pairs)
            print(markdown_table([r for r in rows if r["model"] == label],
                                 ["model", "pairs_from", "pairs_to", "accuracy", "max_z_L0", "norm_z_L0",
                                  "denominator_L0", "read_size_L0", "max_z_L1", "denominator_L1", "read_size_L1",
                                  "max_abs_A_L1"]), flush=True)
    payload = {"benchmark": "retrieval_drift", "args": vars(args), "seed": args.seed, "git_commit": git_commit(),
               "machine": machine_info("cpu"), "wall_seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    columns = ["model", "pairs_from", "pairs_to", "accuracy", "scored"] + [
        f"{k}_L{l}" for k in ("max_abs_A", "max_z", "norm_z", "denominator", "read_size") for l in range(2)]
    md = ["# Rewrite accuracy along long streams, with the memory state", "",
          f"Command: `python -m benchmarks.retrieval_drift {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
          f"{args.batch} sequences of {args.pairs} rewrite pairs (seed {args.seed}); accuracy = the prediction at "
          "each pair's sep equals the value that key held before (pairs whose key is new are not scored); "
          "state columns are means over the bin's segments and the batch (L0, L1 = layer). Commit "
          f"{payload['git_commit']}, {payload['wall_seconds']} s. Each model was trained and saved by "
          "`python -m benchmarks.associative_retrieval --models armt --tasks rewrite --save-models DIR FLAGS` "
          "(FLAGS as in the model column; its exact-match rows are in associative_retrieval_armt_<...>.md). "
          "Rows marked [read norm capped at CAP] are an intervention on the same weights: every retrieved vector "
          "(every layer and row) is scaled down to norm <= CAP; read_size there is measured before the cap.", "", markdown_table(rows, columns)]
    write_results(args.name, payload, "\n".join(md))


def _model_args(flags: list[str]) -> argparse.Namespace:
    """The associative_retrieval defaults plus ``flags``: the model is rebuilt exactly as it was trained."""
    return parse_args(["--models", "armt", "--tasks", "rewrite", *flags])


if __name__ == "__main__":
    main()
