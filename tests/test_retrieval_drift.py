"""benchmarks.retrieval_drift re-implements the segment loop to look inside it: it must score what the model computes."""

import torch

from benchmarks.associative_retrieval import build, make_tasks, parse_args
from benchmarks.retrieval_drift import summarise, trace


def _model(*flags):
    """A small retriever whose memory matters (W_v starts at 0), the same weights whatever the flags."""
    args = parse_args(["--models", "armt", "--tasks", "rewrite", "--d-model", "32", *flags])
    task = make_tasks(args)["rewrite"]
    torch.manual_seed(0)
    model = build("armt", task, args).eval()
    with torch.no_grad():
        for memory in model.backbone.memories:
            memory.W_v.weight.normal_(0, 0.5)
    return args, task, model


def test_trace_scores_the_models_own_predictions():
    args, task, model = _model()
    pairs, batch = 23, 5
    result = trace(model, task, pairs, batch, seed=3)
    body, targets, _, _ = task.sample_queries(batch, pairs, 1, torch.Generator().manual_seed(3))
    with torch.no_grad():
        pred = model(body, all_positions=True).argmax(-1)
    sep = torch.arange(pairs) * task.segment_length + task.key_size
    expected = (pred[:, sep] == targets[:, sep]).float()
    assert torch.equal(result["scored"], targets[:, sep] != -100)
    assert torch.equal(result["correct"], expected)
    assert result["scored"].any()
    # state statistics are recorded for every layer and segment, and are finite
    for values in result["stats"].values():
        assert values.shape == (args.layers, pairs) and torch.isfinite(values).all()
    rows = summarise("m", result, pairs)
    assert [r["pairs_to"] for r in rows] == [23]
    n = result["scored"].sum().item()
    assert rows[0]["scored"] == n
    assert abs(rows[0]["accuracy"] - (expected * result["scored"]).sum().item() / n) < 1e-4


def test_read_cap_intervention():
    _, task, model = _model()
    plain = trace(model, task, 12, 4, seed=5)
    loose = trace(_model("--read-norm-cap", "1e9")[2], task, 12, 4, seed=5)  # a cap nothing reaches changes nothing
    assert torch.equal(plain["correct"], loose["correct"])
    for key in plain["stats"]:
        assert torch.allclose(plain["stats"][key], loose["stats"][key], rtol=1e-5, atol=1e-6)
    tight = trace(_model("--read-norm-cap", "1e-3")[2], task, 12, 4, seed=5)  # a tight cap changes the state that gets written
    assert not torch.allclose(plain["stats"]["max_abs_A"], tight["stats"]["max_abs_A"])
