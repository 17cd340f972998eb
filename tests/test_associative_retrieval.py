"""The associative-retrieval task generator and the benchmark's pipeline (tiny budget)."""

import json

import pytest
import torch

from datasets.associative_retrieval import RetrievalTask, capacity_estimate


def _decode(task: RetrievalTask, tokens: torch.Tensor, pairs: int):
    seg = task.segment_length
    out = []
    for i in range(pairs):
        s = tokens[i * seg : (i + 1) * seg].tolist()
        key = tuple(s[: task.key_size])
        assert s[task.key_size] == task.sep and s[-1] == task.eos
        out.append((key, s[task.key_size + 1]))
    query = tuple(tokens[pairs * seg : pairs * seg + task.key_size].tolist())
    assert tokens[-1].item() == task.sep
    return out, query


@pytest.mark.parametrize("shared_vocab", [True, False])
@pytest.mark.parametrize("kind,key_size", [("rewrite", 1), ("remember", 2)])
def test_answers_are_the_latest_value_of_the_query_key(kind, key_size, shared_vocab):
    task = RetrievalTask(kind, key_size=key_size, shared_vocab=shared_vocab)
    g = torch.Generator().manual_seed(0)
    tokens, answers = task.sample(64, 20, g)
    assert tokens.shape == (64, 20 * task.segment_length + key_size + 1)
    assert tokens.max() < task.vocab_size
    for b in range(64):
        pairs, query = _decode(task, tokens[b], 20)
        latest = {k: v for k, v in pairs}
        assert answers[b].item() == latest[query]
        keys = [k for k, _ in pairs]
        if kind == "remember":
            assert len(set(keys)) == len(keys)
    if kind == "rewrite":
        assert any(len({k for k, _ in _decode(task, t, 20)[0]}) < 20 for t in tokens), "keys should repeat"


def test_dense_targets_are_the_previous_value_at_every_sep():
    task = RetrievalTask("rewrite", shared_vocab=False)
    tokens, targets = task.sample_dense(16, 30, torch.Generator().manual_seed(1))
    seg = task.segment_length
    for b in range(16):
        pairs, query = _decode(task, tokens[b], 30)
        seen = {}
        for i, (k, v) in enumerate(pairs):
            expected = seen.get(k, -100)
            assert targets[b, i * seg + task.key_size].item() == expected
            seen[k] = v
        assert targets[b, -1].item() == seen[query]
        scored = (targets[b] != -100).nonzero().flatten().tolist()
        assert all(tokens[b, p].item() == task.sep for p in scored), "targets only at sep positions"


def test_same_seed_same_sequences_and_bad_requests_rejected():
    task = RetrievalTask("rewrite")
    a = task.sample(4, 5, torch.Generator().manual_seed(3))
    b = task.sample(4, 5, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="unique keys"):
        RetrievalTask("remember", key_size=1).sample(2, 17, torch.Generator())
    with pytest.raises(ValueError, match="kind"):
        RetrievalTask("recall")  # type: ignore[arg-type]


def test_capacity_estimate():
    assert capacity_estimate(100, 1.0, 16) == pytest.approx(100)
    assert capacity_estimate(100, 1 / 16, 16) == pytest.approx(0)
    assert capacity_estimate(100, 0.5, 16) == pytest.approx(100 * 7 / 15)


def test_benchmark_pipeline_writes_results(tmp_path, monkeypatch):
    import benchmarks.associative_retrieval as ar
    import benchmarks.common as common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    ar.main(["--steps", "3", "--check-every", "3", "--eval-pairs", "8", "--eval-samples", "8", "--jobs", "1",
             "--tasks", "rewrite", "--d-model", "16", "--name", "tiny"])
    rows = json.loads((tmp_path / "tiny.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"armt", "rmt", "gru"}
    for r in rows:
        assert {"model", "task", "pairs", "exact_match", "train_pairs", "train_seconds"} <= set(r)
        assert 0.0 <= r["exact_match"] <= 1.0
    assert "| armt | rewrite | 8 |" in (tmp_path / "tiny.md").read_text()


@pytest.mark.parametrize("name", ["armt", "rmt", "gru"])
def test_shared_prefix_queries_equal_separate_sequences(name):
    import argparse

    import benchmarks.associative_retrieval as ar

    task = RetrievalTask("rewrite", shared_vocab=False)
    args = argparse.Namespace(d_model=16, layers=2, mem_tokens=2, d_mem=4, memory_heads=1, phi_l2norm=False,
                              read_norm_cap=None)
    model = ar.build(name, task, args).eval()
    if name == "armt":  # a live memory
        for memory in model.backbone.memories:
            torch.nn.init.normal_(memory.W_v.weight, std=0.3)
    body, _, queries, _ = task.sample_queries(3, 6, 4, torch.Generator().manual_seed(0))
    _, shared = model.forward_queries(body, queries)
    for j in range(4):
        separate = model(torch.cat([body, queries[:, j]], dim=1))
        torch.testing.assert_close(shared[:, j], separate, rtol=1e-5, atol=1e-5)


def test_sizes_generators_and_capacity_arguments_are_named():
    from datasets.associative_retrieval import RetrievalTask, capacity_estimate

    task = RetrievalTask("rewrite")
    g = torch.Generator().manual_seed(0)
    for args, message in (((0, 3, g), "batch: must be an int >= 1"), ((2, 0, g), "pairs: must be an int >= 1"),
                          ((2, 3, None), "generator: a torch.Generator")):
        with pytest.raises(ValueError, match=message):
            task.sample(*args)
    for args, message in (((10, 0.5, 1), "num_values must be an int >= 2"), ((10, 1.5, 16), "accuracy"),
                          ((-1, 0.5, 16), "pairs must be >= 0")):
        with pytest.raises(ValueError, match=message):
            capacity_estimate(*args)
