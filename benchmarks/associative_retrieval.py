"""Associative retrieval (ARMT paper, DESIGN.md section 7): ARMT vs RMT vs GRU, same training budget.

Train with a curriculum up to --train-pairs pairs (one pair per segment), then measure exact match at
50, 150, 500 and 1000 pairs: rewrite (keys repeat, answer = latest value) and remember (unique keys;
capacity estimate k = n (v alpha - 1) / (v - 1)).

    python -m benchmarks.associative_retrieval            # full run
    python -m benchmarks.associative_retrieval --quick    # a few minutes
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from armt_ts import ARMT, ARMTConfig, MemoryState
from armt_ts.peers import RMT, GRUPeer
from benchmarks.common import (device_name, existing_dir, git_commit, machine_info, markdown_table, non_negative_float,
                               non_negative_int, optimizer_step, positive_float, positive_int, Timer, result_name,
                               write_results)
from datasets.associative_retrieval import RetrievalTask, capacity_estimate

MODELS = ("armt", "rmt", "gru")


class Retriever(nn.Module):
    """Token embedding -> backbone -> logits of the last position (the query's sep)."""

    def __init__(self, vocab: int, backbone: nn.Module, d_model: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        # GPT-2 scale, the same as the backbone's learned positions: with torch's default N(0, 1) the
        # positions (which tell a key from a value: both use the same 16 symbols) are drowned out
        nn.init.normal_(self.embed.weight, std=0.02)
        self.backbone = backbone
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: Tensor, all_positions: bool = False) -> Tensor:
        """-> logits [B, vocab] at the last position, or [B, L, vocab] with ``all_positions``."""
        y, _ = self.backbone(self.embed(tokens))
        return self.head(y if all_positions else y[:, -1])

    def forward_queries(self, pairs: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """pairs [B, L] (whole segments), queries [B, Q, Lq] -> (pair logits [B, L, V], query logits [B, Q, V]).

        The pairs run once; the state after them is repeated for the Q query segments, so each query
        sees exactly what it would see at the end of its own sequence of the paper's format.
        """
        B, Q, Lq = queries.shape
        y, state = self.backbone(self.embed(pairs))
        batch_dim = 1 if isinstance(self.backbone, GRUPeer) else 0
        yq, _ = self.backbone(self.embed(queries.reshape(B * Q, Lq)), repeat_state(state, Q, batch_dim))
        return self.head(y), self.head(yq[:, -1]).view(B, Q, -1)


def repeat_state(state: MemoryState | Tensor, times: int, batch_dim: int = 0) -> MemoryState | Tensor:
    """Repeat each batch row of a backbone's state ``times`` times (row b -> rows b*times ... b*times+times-1).

    ARMT: MemoryState; RMT: memory tokens [B, M, D]; GRU: hidden [layers, B, H] (batch_dim 1).
    """
    if isinstance(state, MemoryState):
        return MemoryState(tuple(a.repeat_interleave(times, 0) for a in state.A),
                           tuple(z.repeat_interleave(times, 0) for z in state.z))
    return state.repeat_interleave(times, batch_dim)


def backbone_config(task: RetrievalTask, args: argparse.Namespace) -> ARMTConfig:
    return ARMTConfig(
        d_model=args.d_model, n_layers=args.layers, n_heads=4, d_ff=2 * args.d_model,
        segment_length=task.segment_length, num_mem_tokens=args.mem_tokens, d_mem=args.d_mem,
        memory_heads=args.memory_heads, phi_l2norm=args.phi_l2norm, read_norm_cap=args.read_norm_cap,
    )


def build(name: str, task: RetrievalTask, args: argparse.Namespace) -> Retriever:
    config = backbone_config(task, args)
    if name == "armt":
        backbone: nn.Module = ARMT(config)
    elif name == "rmt":
        backbone = RMT(config)
    elif name == "gru":
        # match the ARMT retriever's parameter count (embedding and head are the same for both)
        armt_params = sum(p.numel() for p in ARMT(config).parameters())
        backbone = GRUPeer.matched(config, armt_params)
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    return Retriever(task.vocab_size, backbone, config.d_model)


def curriculum(train_pairs: int, start: int = 4) -> list[int]:
    # starts at several pairs: a 1-pair stage teaches "answer the last value", a shortcut that ignores
    # keys and that the models were seen to stay stuck in (benchmarks/results/associative_retrieval.md)
    stages, n = [], start
    while n < train_pairs:
        stages.append(n)
        n *= 2
    return stages + [train_pairs]


def autocast(args: argparse.Namespace):
    """bf16 autocast when asked (the memory state stays fp32 inside the model); a no-op otherwise."""
    return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16)


@torch.no_grad()
def exact_match(model: Retriever, task: RetrievalTask, pairs: int, samples: int, seed: int, batch: int,
                args: argparse.Namespace) -> float:
    model.eval()
    g = torch.Generator().manual_seed(seed)
    correct = 0
    for start in range(0, samples, batch):
        x, y = task.sample(min(batch, samples - start), pairs, g)
        with autocast(args):
            pred = model(x.to(args.device)).argmax(-1).cpu()
        correct += (pred == y).sum().item()
    model.train()
    return correct / samples


@torch.no_grad()
def memory_stats(model: Retriever, task: RetrievalTask, pairs: int, seed: int, args: argparse.Namespace) -> dict:
    """max |A| and max z over layers after ``pairs`` pairs (16 sequences): is the state bounded? ARMT only."""
    if not isinstance(model.backbone, ARMT):
        return {"max_abs_A": None, "max_z": None}
    x, _ = task.sample(16, pairs, torch.Generator().manual_seed(seed))
    _, state = model.backbone(model.embed(x.to(args.device)))
    return {"max_abs_A": round(max(a.abs().max().item() for a in state.A), 3),
            "max_z": round(max(z.max().item() for z in state.z), 3)}


def train(model: Retriever, task: RetrievalTask, args: argparse.Namespace, seed: int) -> dict:
    """Adaptive curriculum under a fixed step budget, identical for every model.

    Stages double the number of pairs up to --train-pairs; a batch draws its length uniformly from
    [stage/2, stage]. Every --check-every steps the model is scored on fresh sequences of the stage's
    length and moves on once exact match >= --advance-at. After the last stage it keeps training there
    until the budget (--steps) is spent. Same seed -> same data stream for every model.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    )
    stages = curriculum(args.train_pairs, args.curriculum_start)
    stage_i, log = 0, []
    for step in range(1, args.steps + 1):
        stage = stages[stage_i]
        pairs = int(torch.randint(max(1, stage // 2), stage + 1, (1,), generator=g))
        body, body_targets, queries, answers = (t.to(args.device) for t in task.sample_queries(args.batch, pairs, args.queries, g))
        with autocast(args):
            pair_logits, query_logits = model.forward_queries(body, queries)
            logits, targets = query_logits.flatten(0, 1).float(), answers.flatten()
            if args.dense:
                logits = torch.cat([logits, pair_logits.flatten(0, 1).float()])
                targets = torch.cat([targets, body_targets.flatten()])
            loss = nn.functional.cross_entropy(logits, targets, ignore_index=-100)
        optimizer_step(loss, model, opt, sched, f"step {step} ({pairs} pairs, batch of {args.batch})")
        if step % args.check_every == 0 or step == args.steps:
            acc = exact_match(model, task, stage, 256, seed + 1000 + step, 256, args)
            log.append({"step": step, "stage_pairs": stage, "loss": round(loss.item(), 4), "exact_match": acc})
            print(f"    step {step:>5}  stage {stage:>3} pairs  loss {loss.item():.4f}  exact match {acc:.3f}", flush=True)
            if acc >= args.advance_at and stage_i < len(stages) - 1:
                stage_i += 1
    return {"log": log, "steps": args.steps, "final_stage": stages[stage_i]}


def make_tasks(args: argparse.Namespace) -> dict[str, RetrievalTask]:
    return {
        "rewrite": RetrievalTask("rewrite", num_symbols=16, key_size=1, shared_vocab=args.shared_vocab),
        # key size 1 gives only 16 unique keys; remember needs unique keys up to the largest evaluation
        "remember": RetrievalTask("remember", num_symbols=16, key_size=args.remember_key_size, shared_vocab=args.shared_vocab),
    }


def run_task(args: argparse.Namespace, task_name: str) -> tuple[list[dict], dict]:
    """Train and evaluate every model on one task (one process, ``args.threads`` torch threads)."""
    torch.set_num_threads(args.threads)
    task = make_tasks(args)[task_name]
    rows, curves = [], {}
    for name in args.models:
        torch.manual_seed(args.seed)
        model = build(name, task, args).to(args.device)
        params = sum(p.numel() for p in model.parameters())
        print(f"[{task_name}] {name}: {params} parameters", flush=True)
        weights = Path(args.load_models) / f"{task_name}_{name}.safetensors" if args.load_models else None
        with Timer() as t:
            if weights is not None:  # evaluate a model trained by an earlier run (--save-models)
                model.load_state_dict(load_file(str(weights), device=str(args.device)))
                info = {"log": [], "steps": 0, "final_stage": None}
            else:
                info = train(model, task, args, args.seed)
        if args.save_models:
            Path(args.save_models).mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                      str(Path(args.save_models) / f"{task_name}_{name}.safetensors"))
        curves[f"{task_name}/{name}"] = info["log"]
        for pairs in args.eval_pairs:
            if task.kind == "remember" and pairs > task.num_keys:
                continue
            with Timer() as te:
                acc = exact_match(model, task, pairs, args.eval_samples, args.seed + 7 + pairs, args.eval_batch, args)
            row = {
                "model": name, "task": task_name, "pairs": pairs, "exact_match": acc,
                "train_pairs": args.train_pairs, "train_seconds": round(t.seconds, 1), "train_steps": info["steps"],
                "final_stage_pairs": info["final_stage"],
                "params": params, "key_size": task.key_size, "eval_samples": args.eval_samples,
                "eval_seconds": round(te.seconds, 2),
                "capacity_estimate": round(capacity_estimate(pairs, acc, task.num_symbols), 1) if task.kind == "remember" else None,
                **memory_stats(model, task, pairs, args.seed + 11 + pairs, args),
            }
            rows.append(row)
            print(f"    [{task_name}] {name} eval {pairs:>4} pairs: exact match {acc:.4f}", flush=True)
    return rows, curves


def run(args: argparse.Namespace) -> dict:
    """All tasks; with --jobs 2 the two tasks train in parallel processes (one core each)."""
    t0 = time.perf_counter()
    if args.jobs > 1 and len(args.tasks) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            results = list(pool.map(run_task, [args] * len(args.tasks), args.tasks))
    else:
        results = [run_task(args, t) for t in args.tasks]
    rows, curves = [], {}
    for r, c in results:
        rows += r
        curves |= c
    return {"rows": rows, "curves": curves, "wall_seconds": round(time.perf_counter() - t0, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the budget defaults (--quick or full) filled in."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small budget: finishes in a few minutes")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--tasks", nargs="+", default=["rewrite", "remember"], choices=["rewrite", "remember"])
    p.add_argument("--train-pairs", type=positive_int, default=50)
    p.add_argument("--eval-pairs", type=positive_int, nargs="+", default=[50, 150, 500, 1000])
    p.add_argument("--steps", type=positive_int, default=None,
                   help="training steps per model (default 2000; quick: 300)")
    p.add_argument("--check-every", type=positive_int, default=100)
    p.add_argument("--advance-at", type=float, default=0.95, help="exact match that moves the curriculum on")
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--d-model", type=positive_int, default=64)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--mem-tokens", type=positive_int, default=4)
    p.add_argument("--d-mem", type=positive_int, default=16)
    p.add_argument("--memory-heads", type=positive_int, default=1)
    p.add_argument("--phi-l2norm", action="store_true")
    p.add_argument("--read-norm-cap", type=non_negative_float, default=None,
                   help="ARMTConfig.read_norm_cap: bound each retrieved vector's norm (not in the paper)")
    p.add_argument("--curriculum-start", type=positive_int, default=4)
    p.add_argument("--shared-vocab", action=argparse.BooleanOptionalAction, default=False,
                   help="keys and values use the same 16 tokens (default: values have their own 16)")
    p.add_argument("--queries", type=positive_int, default=16,
                   help="training queries per sequence of pairs (each a full sequence of the paper's format)")
    p.add_argument("--dense", action=argparse.BooleanOptionalAction, default=True,
                   help="score every 'key sep' prefix during training (same inputs; see RetrievalTask.sample_dense)")
    p.add_argument("--remember-key-size", type=positive_int, default=3)
    p.add_argument("--eval-samples", type=positive_int, default=None, help="default 1000 (quick: 200)")
    p.add_argument("--eval-batch", type=positive_int, default=250)
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads per process (1 is fastest for these small matrices)")
    p.add_argument("--jobs", type=positive_int, default=2, help="tasks trained in parallel processes")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", type=device_name, default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (memory state stays fp32)")
    p.add_argument("--save-models", default=None, metavar="DIR",
                   help="save each trained model as DIR/<task>_<model>.safetensors")
    p.add_argument("--load-models", type=existing_dir, default=None, metavar="DIR",
                   help="skip training: evaluate the models saved by --save-models in DIR (same model flags)")
    p.add_argument("--name", type=result_name, default=None, help="result file stem under benchmarks/results "
                   "(default associative_retrieval, or associative_retrieval_quick with --quick)")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 300 if args.quick else 2000
    if args.eval_samples is None:
        args.eval_samples = 200 if args.quick else 1000
    if args.quick:
        args.eval_pairs = [p for p in args.eval_pairs if p <= 150]
    if args.name is None:
        args.name = "associative_retrieval_quick" if args.quick else "associative_retrieval"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    commit = git_commit()  # the code that runs, before anything else can change the tree
    result = run(args)
    payload = {
        "benchmark": "associative_retrieval",
        "protocol": "DESIGN.md section 7: 16 symbols, one pair per segment, curriculum up to train_pairs; "
        "same stages, steps, batch and data for every model",
        "args": vars(args), "seed": args.seed, "git_commit": commit, "machine": machine_info(args.device),
        **result,
    }
    columns = ["model", "task", "pairs", "exact_match", "capacity_estimate", "train_pairs", "final_stage_pairs",
               "train_seconds", "params"]
    md = [
        "# Associative retrieval: ARMT vs RMT vs GRU",
        "",
        f"Command: `python -m benchmarks.associative_retrieval {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
        "",
        f"Task (DESIGN.md section 7): one pair 'key sep value eos' per segment, then a query 'key sep'; "
        f"16 key symbols; values use {'the same' if args.shared_vocab else 'their own'} 16 symbols. "
        f"Rewrite: key size 1 (keys repeat; the answer is the latest value). Remember: key size "
        f"{args.remember_key_size} (unique keys; key size 1 has only 16), capacity k = n(v*alpha - 1)/(v - 1).",
        "",
        f"Training, identical for every model: {args.steps} steps of batch {args.batch}, AdamW lr {args.lr} "
        f"(warm-up, cosine), gradient clip 1.0, adaptive curriculum over {curriculum(args.train_pairs, args.curriculum_start)} "
        f"pairs (advance at exact match >= {args.advance_at}, checked every {args.check_every} steps), "
        f"{args.queries} query segments per sequence of pairs (sharing the pairs' state)"
        f"{' and every earlier key-sep prefix scored (dense)' if args.dense else ''}; evaluation uses single "
        f"sequences of the paper's format; "
        f"the same seeded data stream. Models: d_model {args.d_model}, {args.layers} layers, ARMT/RMT with "
        f"{args.mem_tokens} memory tokens (ARMT d_mem {args.d_mem}), GRU with matched parameters. "
        f"Exact match over {args.eval_samples} fresh sequences per row. Seed {args.seed}; commit "
        f"{payload['git_commit']}; total wall time {result['wall_seconds']} s on "
        f"{payload['machine'].get('cpu_model', '?')}, {args.jobs} task(s) in parallel, {args.threads} thread(s) each.",
        "",
        markdown_table(result["rows"], columns),
    ]
    if args.load_models:
        md[6:6] = [f"No training in this run: the weights were loaded from `{args.load_models}` (saved by an earlier run "
                   "with `--save-models`; a flag that adds no parameters, such as --read-norm-cap, may differ); the training "
                   "paragraph describes that run.", ""]
    if args.read_norm_cap is not None:
        md[6:6] = [f"ARMT read norm capped at {args.read_norm_cap} (`ARMTConfig.read_norm_cap`, not in the paper).", ""]
    write_results(args.name, payload, "\n".join(md))


if __name__ == "__main__":
    main()
