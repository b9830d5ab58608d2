"""What the authors' released masking code selects, given the centres: a plain-Python transcription.

Written from reading two released functions (our own code; their comments and quirks described
here), so that ``masking=genemask_released`` and ``masking=global_pmi rank_by=position`` can be
checked against the released behaviour rather than against our reading of the papers:

- GeneMask (roysoumya/GeneMask, ``Code-B_run_pretrain_pmi.py``, ``mask_tokens``);
- Global-PMI, the successor's baseline (roysoumya/curriculum-GeneMask,
  ``src/pretraining-adaptive/Global-pretraining-code.py``, ``mask_tokens``).

Both look up the rank of the *position index* decoded as if it were a token id
(``kmer_id_to_pmi_rank(center, …)``), so position p ranks as the k-mer with id p. Their rank table
is the authors' NPMI ranking keyed by k-mer string, pickled as a ``defaultdict(int)``: a key it
lacks (the special tokens' ids 0-4, which decode to no k-mer) reads as 0, the best rank, without
raising ``KeyError``. GeneMask's code keeps that 0; the successor's maps 0 (and a ``KeyError``) to
4096, the worst rank.

Both bound every span by ``1 <= position <= end``, where ``end`` is the last position whose
``probability_matrix`` entry is not 0: not [CLS]/[SEP] (DNABERT's tokenizer marks only those two as
special when ``already_has_special_tokens``) and not [PAD]. So [UNK] positions inside a row can be
masked there; on N-free rows ``end`` is the last k-mer and ``1..end`` are exactly the valid positions.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

PAD, UNK, CLS, SEP, MASK = range(5)


def released_end(row: Sequence[int]) -> int | None:
    """The last position the released code may mask: not [PAD], [CLS] or [SEP] (None: no such position;
    the released code would fail on ``[...][-1]`` of an empty list)."""
    allowed = [p for p, token in enumerate(row) if token not in (PAD, CLS, SEP)]
    return allowed[-1] if allowed else None


def genemask_released_reference(
    input_ids: list[list[int]], centres: list[list[bool]], kmer_ranks: Mapping[int, int], k: int = 6
) -> list[list[bool]]:
    """The released GeneMask's masked positions for every row, given its centres.

    ``kmer_ranks`` maps a k-mer's token id to its NPMI rank (the released dict, keyed by id instead
    of by the k-mer string the id decodes to); any other id reads as 0, like the ``defaultdict(int)``.
    """
    def rank(position: int) -> int:  # kmer_id_to_pmi_rank(position): the position index as a token id
        return kmer_ranks.get(position, 0)

    # MASK_LIST[k]: the k-span offsets without 0, in DNABERT's order ({-2,-1,1,2,3} for k=6)
    span = [o for o in range(-((k - 1) // 2), k // 2 + 1) if o != 0]
    # mask_list_11: the long span without 0 ({-5..-1, 1..5} for k=6); best(c) is masked anyway,
    # as it lies in c's k-span (or is c)
    long_span = [o for o in range(-(k - 1), k) if o != 0]

    out = []
    for row, row_centres in zip(input_ids, centres):
        masked = [bool(c) for c in row_centres]  # the Bernoulli draws stay masked
        end = released_end(row)
        # the released code gets the centres as a list in ascending order and makes a set of them:
        # every later loop iterates the set, in CPython's set order
        mask_centers = set([p for p, is_centre in enumerate(row_centres) if is_centre])
        new_centers = set(mask_centers)
        highest = []  # (rank, best position) per centre, in set order
        for center in mask_centers:
            min_rank, min_index = rank(center), center  # the centre first ...
            for offset in span:  # ... then the others left to right, strictly better only
                current = center + offset
                if end is not None and 1 <= current <= end:
                    new_centers.add(current)
                    current_rank = rank(current)
                    if current_rank < min_rank:
                        min_rank, min_index = current_rank, current
            highest.append((min_rank, min_index))
        if highest:
            segment_cnt = math.ceil(len(highest) / 2)
            if segment_cnt < 5:  # fewer than 9 centres: every one is high
                top = highest
            else:  # list.sort is stable: ties stay in set order
                top = sorted(highest, key=lambda pair: pair[0])[:segment_cnt]
            for _, best in top:
                for offset in long_span:
                    current = best + offset
                    if 1 <= current <= end:
                        new_centers.add(current)
        for p in new_centers:
            masked[p] = True
        out.append(masked)
    return out


def global_pmi_released_reference(
    input_ids: list[list[int]], draws: list[list[bool]], kmer_ranks: Mapping[int, int], k: int = 6
) -> tuple[list[list[bool]], list[list[bool]]]:
    """The released Global-PMI baseline's ``(masked, chosen)`` for every row, given its draws.

    Only the number of draws is used; the draws themselves are unmasked. Every position 1..end is
    ranked by its index decoded as a token id, a missing or 0 rank counting as 4096; the
    count-many first positions by (rank, index) each mask -(k-1)..k-1 around them, within 1..end.
    """
    def rank(position: int) -> int:
        value = kmer_ranks.get(position, 0)  # defaultdict(int): a missing key reads 0 ...
        return 4096 if value == 0 else value  # ... which this code maps to the worst rank

    long_span = range(-(k - 1), k)  # mask_list_11 here includes 0
    masked_rows, chosen_rows = [], []
    for row, row_draws in zip(input_ids, draws):
        count = len(set(p for p, drawn in enumerate(row_draws) if drawn))
        end = released_end(row)
        masked = [False] * len(row)
        chosen = [False] * len(row)
        if end is not None:
            ranked = sorted(((p, rank(p)) for p in range(1, end + 1)), key=lambda item: (item[1], item[0]))
            for p, _ in ranked[:count]:
                chosen[p] = True
                for offset in long_span:
                    if 1 <= p + offset <= end:
                        masked[p + offset] = True
        masked_rows.append(masked)
        chosen_rows.append(chosen)
    return masked_rows, chosen_rows
