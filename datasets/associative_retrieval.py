"""The associative-retrieval task of the ARMT paper (DESIGN.md section 7), seeded.

A sequence is n segments "key sep value eos" (one pair per segment) followed by a query segment
"key sep"; the answer is the value stored under the query key, read at the position of the query's sep.
- remember: keys are unique, the query asks any stored pair;
- rewrite: keys repeat, the answer is the LATEST value written under the query key.
Symbols are 0..num_symbols-1; SEP and EOS follow them in the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


@dataclass(frozen=True)
class RetrievalTask:
    """One task variant. Keys are ``key_size`` symbols, values one symbol."""

    kind: Literal["remember", "rewrite"]
    num_symbols: int = 16
    key_size: int = 1
    # False: values are written with their own 16 tokens (ids after the key symbols), so a key and a
    # value are told apart by the token itself, not only by its position in the segment
    shared_vocab: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("remember", "rewrite"):
            raise ValueError(f"RetrievalTask.kind: expected 'remember' or 'rewrite', got {self.kind!r}")
        if self.num_symbols < 2 or self.key_size < 1:
            raise ValueError("RetrievalTask: num_symbols must be >= 2 and key_size >= 1")

    @property
    def value_offset(self) -> int:
        """Token id of value symbol 0."""
        return 0 if self.shared_vocab else self.num_symbols

    @property
    def sep(self) -> int:
        return self.value_offset + self.num_symbols

    @property
    def eos(self) -> int:
        return self.sep + 1

    @property
    def vocab_size(self) -> int:
        return self.eos + 1

    @property
    def segment_length(self) -> int:
        """Tokens in one pair segment: key, sep, value, eos."""
        return self.key_size + 3

    @property
    def num_keys(self) -> int:
        return self.num_symbols**self.key_size

    def sample(self, batch: int, pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The paper's format: -> tokens [batch, pairs * (key_size + 3) + key_size + 1], answers [batch]."""
        tokens, targets = self.sample_dense(batch, pairs, generator)
        return tokens, targets[:, -1]

    def sample_dense(self, batch: int, pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """-> tokens [batch, L] and targets [batch, L] (long, -100 where there is nothing to answer).

        ``batch`` and ``pairs`` are ints >= 1 and ``generator`` a torch.Generator (never the global RNG).

        Every "key sep" prefix is a query: at each pair's sep the target is the value the key held
        BEFORE this pair's write (if the key was written earlier), and at the final query's sep it is the
        answer. The input is exactly the task's sequence; only more of its positions are scored.
        """
        body, body_targets, queries, answers = self.sample_queries(batch, pairs, 1, generator)
        tokens = torch.cat([body, queries[:, 0]], dim=1)
        tail_targets = torch.full((batch, self.key_size + 1), -100)
        tail_targets[:, -1] = answers[:, 0]
        return tokens, torch.cat([body_targets, tail_targets], dim=1)

    def sample_queries(
        self, batch: int, pairs: int, queries: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Pairs once, then several independent query segments against the same stored pairs.

        -> pair tokens [batch, pairs * (key_size + 3)], their dense targets [batch, pairs * (key_size + 3)]
        (see ``sample_dense``), query tokens [batch, queries, key_size + 1] ("key sep") and answers
        [batch, queries]. Each (pairs, query j) is one sequence of the paper's format; sharing the pairs
        lets a model score many queries for the cost of one pass over the pairs.
        """
        for name, n in (("batch", batch), ("pairs", pairs), ("queries", queries)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {n!r}")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator: a torch.Generator (the task never draws from the global RNG), got "
                             f"{type(generator).__name__}")
        if self.kind == "remember" and pairs > self.num_keys:
            raise ValueError(f"remember with {pairs} pairs needs unique keys, but only {self.num_keys} exist")
        if self.kind == "remember":
            key_ids = torch.argsort(torch.rand(batch, self.num_keys, generator=generator), dim=1)[:, :pairs]
        else:
            key_ids = torch.randint(0, self.num_keys, (batch, pairs), generator=generator)
        values = torch.randint(0, self.num_symbols, (batch, pairs), generator=generator) + self.value_offset
        rows = torch.arange(batch)
        # scan the pairs once: the value each key held before this pair, and the latest value per key
        prev = torch.full((batch, pairs), -100)
        table = torch.full((batch, self.num_keys), -100)
        for i in range(pairs):
            prev[:, i] = table[rows, key_ids[:, i]]
            table[rows, key_ids[:, i]] = values[:, i]
        # query keys are keys that were written; the answer is the latest value under that key
        pos = torch.randint(0, pairs, (batch, queries), generator=generator)
        query_ids = torch.gather(key_ids, 1, pos)
        answers = torch.gather(table, 1, query_ids)
        seg = self.segment_length
        sep = torch.full((batch, pairs, 1), self.sep)
        eos = torch.full((batch, pairs, 1), self.eos)
        body = torch.cat([self._digits(key_ids), sep, values[..., None], eos], dim=2).reshape(batch, -1)
        body_targets = torch.full_like(body, -100)
        body_targets[:, self.key_size :: seg] = prev
        query_tokens = torch.cat([self._digits(query_ids), torch.full((batch, queries, 1), self.sep)], dim=2)
        return body, body_targets, query_tokens, answers

    def _digits(self, ids: Tensor) -> Tensor:
        out = []
        for _ in range(self.key_size):
            out.append(ids % self.num_symbols)
            ids = ids // self.num_symbols
        return torch.stack(out[::-1], dim=-1)


def capacity_estimate(pairs: int, accuracy: float, num_values: int) -> float:
    """Pairs actually memorised, from exact-match accuracy alpha over n pairs with v possible values.

    A model that knows k of n pairs and guesses the rest uniformly scores alpha = k/n + (1 - k/n)/v,
    so k = n (v alpha - 1) / (v - 1) (the paper's estimate).
    """
    if isinstance(num_values, bool) or not isinstance(num_values, int) or num_values < 2:
        raise ValueError(f"capacity_estimate: num_values must be an int >= 2, got {num_values!r}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"capacity_estimate: accuracy must be a fraction in [0, 1], got {accuracy!r}")
    if pairs < 0:
        raise ValueError(f"capacity_estimate: pairs must be >= 0, got {pairs!r}")
    return pairs * (num_values * accuracy - 1) / (num_values - 1)
