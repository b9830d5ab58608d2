"""Plain-loop reference of GeneMask's masking (spec §2, steps 2-4, with the centres given).

Written for reading, not speed: one Python loop over sequences and centres that follows the
spec's steps literally, so the vectorised :meth:`gm.masking.strategies.GeneMaskMasking.plan` can be checked
against it (``tests/test_genemask.py``) and a benchmark can import it as ``tests.masking_reference``.

Rules fixed here (and documented in ``gm.masking.strategies``):

- valid positions are real k-mers, ids >= 5 (not [PAD] [UNK] [CLS] [SEP] [MASK]);
- the k-span of centre c is c + o for o in -((k-1)//2) .. k//2 ({-2..3} for k=6);
- score(c) = the lowest rank among the valid tokens of the k-span, best(c) = the position holding
  it; ties go to the leftmost position (``ties="centre"``: to the centre, then the leftmost);
- the high set is the ceil(m/2) centres with the lowest scores (ties: leftmost centre first); with
  ``all_high_if_fewer_than`` = t > 0, a sequence with m < t centres puts every centre in it
  (the released code's rule, t = 9);
- every centre masks its k-span; a high centre also masks best(c)-(k-1) .. best(c)+(k-1);
  everything clipped to valid positions.

Global-PMI (:func:`global_pmi_reference`): per row, m = the number of draws; the m valid positions
with the lowest rank (ties: leftmost) each mask c-(k-1) .. c+(k-1), clipped to valid positions.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

NUM_SPECIAL = 5  # [PAD] [UNK] [CLS] [SEP] [MASK]

#: rank(row, position) -> rank of that position (1 = best)
RankFn = Callable[[int, int], int]


def rank_by_token(table: Sequence[int], input_ids: list[list[int]]) -> RankFn:
    """The paper: a position's rank is the rank of the token it holds, ``table[token_id]``."""
    return lambda row, position: int(table[input_ids[row][position]])


def rank_by_position(table: Sequence[int], worst: int | None = None) -> RankFn:
    """The released code: the position index is looked up as if it were a token id.

    A position beyond the table is no token at all, so it gets the worst rank, like the special
    tokens and k-mers absent from the ranking (``gm.masking.npmi.rank_table``'s rule; the worst rank is the
    table's largest value).
    """
    worst = max(int(r) for r in table) if worst is None else worst
    return lambda row, position: int(table[position]) if position < len(table) else worst


def genemask_reference(
    input_ids: list[list[int]],
    centres: list[list[bool]],
    rank: Union[RankFn, Sequence[int]],
    k: int,
    all_high_if_fewer_than: int = 0,
    ties: str = "leftmost",
) -> tuple[list[list[bool]], list[list[bool]], list[list[int | None]]]:
    """``(masked, high, best)`` for every row; ``best[b][c]`` is None where c is not a centre.

    ``rank`` is a function ``(row, position) -> rank`` (see :func:`rank_by_token`,
    :func:`rank_by_position`) or a table indexed by token id (the paper's lookup).
    """
    if not callable(rank):
        rank = rank_by_token(rank, input_ids)
    span_offsets = range(-((k - 1) // 2), k // 2 + 1)
    long_offsets = range(-(k - 1), k)

    masked, high, best = [], [], []
    for b, row in enumerate(input_ids):
        length = len(row)
        valid = [token >= NUM_SPECIAL for token in row]
        row_masked = [False] * length
        row_high = [False] * length
        row_best: list[int | None] = [None] * length

        def mask(position: int) -> None:
            if 0 <= position < length and valid[position]:
                row_masked[position] = True

        # step 1 is given: the centres (only valid positions can be centres)
        row_centres = [c for c in range(length) if centres[b][c]]
        assert all(valid[c] for c in row_centres), "a centre must be a valid position"

        # step 2: each centre's score and best(c), ties -> leftmost position (or the centre first)
        score = {}
        scan = sorted(span_offsets, key=lambda o: o != 0) if ties == "centre" else list(span_offsets)
        for c in row_centres:
            best_rank, best_position = None, None
            for o in scan:
                p = c + o
                if 0 <= p < length and valid[p]:
                    r = rank(b, p)
                    if best_rank is None or r < best_rank:  # strict: an equal rank further right loses
                        best_rank, best_position = r, p
            score[c] = best_rank
            row_best[c] = best_position

        # step 3: the high set, the ceil(m/2) best scores, ties -> leftmost centre
        m = len(row_centres)
        n_high = m if m < all_high_if_fewer_than else math.ceil(m / 2)
        for c in sorted(row_centres, key=lambda c: (score[c], c))[:n_high]:
            row_high[c] = True

        # step 4: spans, clipped to valid positions
        for c in row_centres:
            for o in span_offsets:
                mask(c + o)
            if row_high[c]:
                for o in long_offsets:
                    mask(row_best[c] + o)

        masked.append(row_masked)
        high.append(row_high)
        best.append(row_best)
    return masked, high, best


def global_pmi_reference(
    input_ids: list[list[int]], draws: list[list[bool]], rank: Union[RankFn, Sequence[int]], k: int
) -> tuple[list[list[bool]], list[list[bool]]]:
    """``(masked, chosen)`` of Global-PMI for every row: as many spans as draws, around the best-ranked
    valid positions (ties: leftmost), each c-(k-1) .. c+(k-1) clipped to valid positions."""
    if not callable(rank):
        rank = rank_by_token(rank, input_ids)
    masked, chosen = [], []
    for b, row in enumerate(input_ids):
        length = len(row)
        valid = [token >= NUM_SPECIAL for token in row]
        m = sum(1 for p in range(length) if draws[b][p] and valid[p])
        candidates = sorted((rank(b, p), p) for p in range(length) if valid[p])
        row_chosen = [False] * length
        row_masked = [False] * length
        for _, c in candidates[:m]:
            row_chosen[c] = True
            for o in range(-(k - 1), k):
                if 0 <= c + o < length and valid[c + o]:
                    row_masked[c + o] = True
        masked.append(row_masked)
        chosen.append(row_chosen)
    return masked, chosen


def strategy_rank(strategy, input_ids: list[list[int]], rng) -> RankFn:
    """The rank function an NPMI-ranked strategy uses, in plain Python (random: one draw per token)."""
    if strategy.rank_by == "random":
        scores = [[rng.random() for _ in row] for row in input_ids]
        return lambda row, position: scores[row][position]
    table = [int(r) for r in strategy.rank_table]
    worst = max(table)  # a position beyond the vocabulary: worst, whatever the special ids rank
    if strategy.special_rank == "best":
        table[:NUM_SPECIAL] = [0] * NUM_SPECIAL  # the released code: special ids read rank 0
    return rank_by_token(table, input_ids) if strategy.rank_by == "token" else rank_by_position(table, worst)


def loop_masking(strategy, input_ids: list[list[int]], seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """A whole masking strategy in plain loops: ``(masked input ids, labels)``.

    Centres (or BERT's tokens) are drawn per position with :mod:`random`, spans come from the
    loops above, replacement is decided per token (or per run of masked positions with
    ``replace="span"``). Same distribution as ``gm.masking.strategies``, not the same draws: it is the
    baseline that ``python -m gm.bench`` times the vectorised strategies against.
    """
    import random

    rng = random.Random(seed)
    k, name = strategy.k, strategy.name
    valid = [[token >= NUM_SPECIAL for token in row] for row in input_ids]
    if name == "bert":
        masked = [[v and rng.random() < strategy.mlm_probability for v in row] for row in valid]
    else:
        centres = [[v and rng.random() < strategy.p_center for v in row] for row in valid]
        if name == "kmer_span":
            masked = [[False] * len(row) for row in valid]
            for b, row in enumerate(centres):
                for c, is_centre in enumerate(row):
                    if is_centre:
                        for o in range(-((k - 1) // 2), k // 2 + 1):
                            if 0 <= c + o < len(row) and valid[b][c + o]:
                                masked[b][c + o] = True
        elif name == "global_pmi":
            masked = global_pmi_reference(input_ids, centres, strategy_rank(strategy, input_ids, rng), k)[0]
        else:
            rank = strategy_rank(strategy, input_ids, rng)
            masked = genemask_reference(input_ids, centres, rank, k, strategy.all_high_if_fewer_than, strategy.ties)[0]

    out = [list(row) for row in input_ids]
    labels = [[-100] * len(row) for row in input_ids]
    for b, row in enumerate(masked):
        decision = None
        for p, is_masked in enumerate(row):
            if not is_masked:
                decision = None
                continue
            labels[b][p] = input_ids[b][p]
            if decision is None or strategy.replace_unit == "token":
                decision = rng.random()
            if decision < strategy.mask_token_prob:
                out[b][p] = 4  # [MASK]
            elif decision < strategy.mask_token_prob + strategy.random_token_prob:
                out[b][p] = rng.randrange(NUM_SPECIAL, strategy.vocab_size)
    return out, labels
