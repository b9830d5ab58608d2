"""Masking strategies for MLM on overlapping k-mers, run on the batch's device (spec §2).

Every strategy answers one question, *which positions are masked* (:meth:`MaskingStrategy.select`),
as tensor operations over the whole batch: no Python loop over sequences or centres and no
host-device synchronisation. Replacement of the selected positions (BERT's 80/10/10) and the
labels are shared by all strategies in :meth:`MaskingStrategy.__call__`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gm.data.tokenizer import MASK_ID, NUM_SPECIAL
from gm.masking.options import option_error
from gm.utils import GMError

IGNORE_INDEX = -100


@dataclass
class MaskedBatch:
    input_ids: torch.Tensor  # after replacement
    labels: torch.Tensor  # original ids at masked positions, IGNORE_INDEX elsewhere
    masked: torch.Tensor  # bool, the positions the loss is computed on
    valid: torch.Tensor  # bool, real k-mers (maskable positions)


def kmer_span_offsets(k: int) -> range:
    """Offsets of the k tokens DNABERT masks around a centre: {-2..3} for k=6, {-1,0,1} for k=3."""
    return range(-((k - 1) // 2), k // 2 + 1)


def dilate(centres: torch.Tensor, offsets: range) -> torch.Tensor:
    """``out[b, p]`` is True when ``centres[b, p - o]`` is True for some offset ``o``.

    A sliding maximum (one pooling kernel over the whole batch) over the window
    ``[p - offsets.stop + 1, p - offsets.start]``, padded with False at both ends.
    """
    if centres.shape[-1] == 0:
        return centres.clone()
    before, after = offsets.stop - 1, -offsets.start
    padded = F.pad(centres.unsqueeze(1).to(torch.float32), (before, after))
    return F.max_pool1d(padded, before + after + 1, stride=1).squeeze(1) > 0


def run_starts(masked: torch.Tensor) -> torch.Tensor:
    """For every position, the index of the first position of the masked run it belongs to."""
    length = masked.shape[1]
    start = masked.clone()
    start[:, 1:] &= ~masked[:, :-1]
    index = torch.arange(length, device=masked.device).expand_as(masked)
    return torch.where(start, index, torch.zeros_like(index)).cummax(dim=1).values


def probability(key: str, value: float) -> float:
    """``value`` if it is a probability, else the one-line error naming ``masking.<key>``."""
    if not 0.0 <= value <= 1.0:
        raise GMError(f"masking.{key} must be in [0, 1], got {value}")
    return value


def bernoulli(input_ids: torch.Tensor, valid: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Each valid position independently with probability ``p``, drawn on the batch's device."""
    return valid & (torch.rand(input_ids.shape, device=input_ids.device, generator=generator) < p)


class MaskingStrategy:
    """Base class: choose positions with :meth:`select`, then replace them BERT-style.

    ``mask_token_prob`` of the masked positions become ``[MASK]``, ``random_token_prob`` a random
    k-mer, the rest keep their token.
    """

    name = "base"

    def __init__(
        self,
        k: int = 6,
        vocab_size: int | None = None,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        replace: str = "token",
        **unknown,
    ) -> None:
        if unknown:  # e.g. +masking.ranking=… with kmer_span: name the strategies that have it
            raise GMError(option_error(self.name, sorted(unknown)[0], self.options()))
        if not 3 <= k <= 6:
            raise GMError(f"masking: k must be between 3 and 6, got {k}")
        if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1:
            raise GMError(
                f"masking: mask_token_prob={mask_token_prob} and random_token_prob={random_token_prob} must be "
                "non-negative and sum to at most 1"
            )
        if replace not in ("token", "span"):
            raise GMError(f"masking.replace must be 'token' or 'span', got {replace!r}")
        self.k = k
        self.replace_unit = replace
        self.vocab_size = vocab_size if vocab_size is not None else 4**k + NUM_SPECIAL
        self.mask_token_prob = mask_token_prob
        self.random_token_prob = random_token_prob

    @classmethod
    def options(cls) -> set[str]:
        """The settings this strategy takes (its and its base classes' keyword arguments)."""
        names: set[str] = set()
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                parameters = inspect.signature(klass.__init__).parameters.values()
                names |= {p.name for p in parameters if p.default is not p.empty}
        return names - {"vocab_size"}

    def select(self, input_ids: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Bool tensor of the positions to mask; must be False wherever ``valid`` is False."""
        raise NotImplementedError

    @staticmethod
    def valid_positions(input_ids: torch.Tensor) -> torch.Tensor:
        """Real k-mers: not special, not padding, not ``[UNK]``."""
        return input_ids >= NUM_SPECIAL

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator | None = None) -> MaskedBatch:
        valid = self.valid_positions(input_ids)
        masked = self.select(input_ids, valid, generator) & valid
        labels = torch.where(masked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        return MaskedBatch(self.replace(input_ids, masked, generator), labels, masked, valid)

    def replace(self, input_ids: torch.Tensor, masked: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """BERT's replacement of the masked positions, decided per token or per span.

        With ``replace="span"`` every run of consecutive masked positions is masked, randomised or
        kept as a whole, so no kept token inside a span leaks the bases the span hides.
        """
        # One 31-bit draw per token: its low 16 bits decide [MASK] / random / keep, its high 15 bits
        # pick the random k-mer (4**k divides 2**15 for k <= 7, so the choice is uniform).
        bits = torch.randint(0, 1 << 31, input_ids.shape, device=input_ids.device, generator=generator, dtype=torch.int32)
        decide = bits & 0xFFFF
        if self.replace_unit == "span":
            decide = decide.gather(1, run_starts(masked))
        to_mask = round(self.mask_token_prob * 65536)
        to_random = round((self.mask_token_prob + self.random_token_prob) * 65536)
        n_kmers = self.vocab_size - NUM_SPECIAL
        pick = (bits >> 16) & (n_kmers - 1) if n_kmers & (n_kmers - 1) == 0 else (bits >> 16) % n_kmers
        random_ids = NUM_SPECIAL + pick
        out = torch.where(masked & (decide < to_mask), MASK_ID, input_ids)
        return torch.where(masked & (decide >= to_mask) & (decide < to_random), random_ids.to(input_ids.dtype), out)

    def __repr__(self) -> str:
        # settings only: derived tables (tensors, per-device caches) would print their contents
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_") and not isinstance(v, torch.Tensor))
        return f"{type(self).__name__}({fields})"


class BertMasking(MaskingStrategy):
    """Original BERT: every valid token is masked independently with ``mlm_probability``.

    On overlapping k-mers this is the easy task GeneMask fixes: a masked k-mer is readable from
    its unmasked neighbours.
    """

    name = "bert"

    def __init__(self, mlm_probability: float = 0.15, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mlm_probability = probability("mlm_probability", mlm_probability)

    def select(self, input_ids: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return bernoulli(input_ids, valid, self.mlm_probability, generator)


class KmerSpanMasking(MaskingStrategy):
    """DNABERT: centres drawn with ``p_center`` (0.025), each masking its k contiguous k-mers.

    6 masked 6-mers around a centre still leave all but one of its bases readable from the
    neighbours; GeneMask's longer spans close that gap.
    """

    name = "kmer_span"

    def __init__(self, p_center: float = 0.025, **kwargs) -> None:
        super().__init__(**kwargs)
        self.p_center = probability("p_center", p_center)

    def centres(self, input_ids: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return bernoulli(input_ids, valid, self.p_center, generator)

    def select(self, input_ids: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return dilate(self.centres(input_ids, valid, generator), kmer_span_offsets(self.k))


_INVALID_SCORE = 1 << 26  # worse than any rank; shifted by _OFFSET_BITS it still fits in int32
_OFFSET_BITS = 3  # a place in the k-span (k <= 6 < 8) rides in the low bits of a score
_RANDOM_SCORES = 1 << 20  # random scores for rank_by="random"
_NO_CENTRE = (1 << 63) - 1  # sorts after every centre's key score * L + position (int64, any L)


def long_span_offsets(k: int) -> range:
    """Offsets of the 2k-1 tokens that overlap any base of a k-mer: {-5..5} for k=6."""
    return range(-(k - 1), k)


class NPMIRankedMasking(KmerSpanMasking):
    """Shared by the strategies that rank positions by NPMI: the rank table and the scores.

    ``rank_by``: ``token`` (the papers), ``position`` (the released code, which ranks the position
    index as if it were a token id, so the choice ignores the sequence; a position beyond the
    vocabulary gets the worst rank), or ``random`` (a random score per token: a control without
    NPMI). ``special_rank``: the rank of the special tokens' ids 0-4, which only ``rank_by=position``
    looks up (positions 1-4 hold real k-mers): ``worst`` (ours) or ``best`` (the released GeneMask
    code, whose rank table was a ``defaultdict(int)``: the missing special tokens rank 0).
    """

    rank_modes = ("token", "position", "random")
    special_modes = ("worst", "best")

    def __init__(
        self, ranking: str | None = None, rank_by: str = "token", special_rank: str = "worst", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if rank_by not in self.rank_modes:
            raise GMError(f"masking.rank_by must be one of {', '.join(self.rank_modes)}, got {rank_by!r}")
        if special_rank not in self.special_modes:
            raise GMError(f"masking.special_rank must be one of {', '.join(self.special_modes)}, got {special_rank!r}")
        from gm.masking.npmi import rank_table  # numpy/csv only; keeps masking importable without NPMI data

        self.rank_by = rank_by
        self.ranking = ranking
        self.special_rank = special_rank
        table = rank_table(ranking, self.k) if rank_by != "random" else None
        self.rank_table = torch.from_numpy(table).int() if table is not None else None
        # Scores only need the order of the ranks (ties included): dense ranks 1..D (D <= 4**k + 1)
        # keep any ranking's values far below _INVALID_SCORE and the int32 arithmetic of plan().
        # One extra entry after the vocabulary holds the worst rank, for rank_by="position" rows
        # longer than the vocabulary (a position beyond it is no token).
        self._dense_table = None
        if table is not None:
            dense = np.unique(table, return_inverse=True)[1].reshape(-1) + 1
            dense = np.append(dense, dense.max())
            if special_rank == "best":
                dense[:NUM_SPECIAL] = 0  # before every k-mer, as the released code's missing keys
            self._dense_table = torch.from_numpy(dense).int()
        self._tables: dict[torch.device, torch.Tensor] = {}

    def _table(self, device: torch.device) -> torch.Tensor:
        if device not in self._tables:  # one host-to-device copy per device, then reused
            self._tables[device] = self._dense_table.to(device)
        return self._tables[device]

    def position_scores(self, input_ids: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Integer scores, lower is better; ``_INVALID_SCORE`` where the position is not a real k-mer."""
        if self.rank_by == "random":
            scores = torch.randint(0, _RANDOM_SCORES, input_ids.shape, device=input_ids.device, generator=generator, dtype=torch.int32)
        elif self.rank_by == "token":
            scores = self._table(input_ids.device).index_select(0, input_ids.reshape(-1)).view(input_ids.shape)
        else:
            # a position index beyond the vocabulary (k <= 4, long rows) is no token: worst rank,
            # like the special tokens and k-mers absent from the ranking (the table's last entry)
            table = self._table(input_ids.device)
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).clamp(max=table.numel() - 1)
            scores = table[positions].expand(input_ids.shape)
        return scores.masked_fill(~valid, _INVALID_SCORE)


class GeneMaskMasking(NPMIRankedMasking):
    """GeneMask (Roy et al. 2023): NPMI-guided span masking, spec §2.

    1. centres: each valid position with ``p_center`` (0.15 / 8.5: half the centres mask 6 tokens,
       half 11, so ~15% of tokens);
    2. each centre's score is the best (lowest) NPMI rank among the valid tokens of its k-span;
       ``best(c)`` is the position holding it (ties: the leftmost, or with ``ties="centre"`` the
       centre itself first, then the leftmost: the released code's scan);
    3. per sequence, the ceil(m/2) centres with the best scores form the high set (ties: leftmost
       centre first);
    4. every centre masks its k-span; a high-set centre also masks the 2k-1 span around
       ``best(c)``, which hides every base of that k-mer from the unmasked neighbours.

    ``rank_by`` and ``special_rank``: see :class:`NPMIRankedMasking`. ``all_high_if_fewer_than=9``
    reproduces the released code's rule that a sequence with fewer than 9 centres puts every centre
    in the high set. ``rank_by=position, special_rank=best, all_high_if_fewer_than=9, ties=centre``
    is the released code (``masking=genemask_released``, checked against a transcription of it in
    ``tests/released_reference.py``).
    """

    name = "genemask"
    tie_modes = ("leftmost", "centre")

    def __init__(
        self, p_center: float = 0.15 / 8.5, all_high_if_fewer_than: int = 0, ties: str = "leftmost", **kwargs
    ) -> None:
        super().__init__(p_center=p_center, **kwargs)
        if ties not in self.tie_modes:
            raise GMError(f"masking.ties must be one of {', '.join(self.tie_modes)}, got {ties!r}")
        self.all_high_if_fewer_than = int(all_high_if_fewer_than)
        self.ties = ties

    def plan(
        self, input_ids: torch.Tensor, valid: torch.Tensor, centres: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked positions, the high set, and ``best(c)`` for every position, given the centres.

        Scores are small integers, so ``score * 8 + code`` (code = priority of the place j in the
        k-span: j itself for leftmost ties; 0 for the centre's place and then left to right for
        centre-first ties) orders by score and then priority: one ``amin`` over the k-span gives
        both the centre's score and ``best(c)``. Keys ``score * L + position`` (int64, any L) are
        unique, so the ceil(m/2)-th smallest key of a row is a threshold that picks the high set exactly.
        """
        batch, length = input_ids.shape
        if length == 0:  # nothing to mask (and no k-th smallest key to gather)
            return valid.clone(), valid.clone(), torch.zeros_like(input_ids)
        k, offsets = self.k, kmer_span_offsets(self.k)
        centre_place = -offsets.start
        if self.ties == "centre":  # the centre's place first, then the others left to right
            codes = [0 if j == centre_place else j + 1 if j < centre_place else j for j in range(k)]
        else:
            codes = list(range(k))
        scores = self.position_scores(input_ids, valid, generator)
        padded = F.pad(scores << _OFFSET_BITS, (-offsets.start, offsets.stop - 1), value=_INVALID_SCORE << _OFFSET_BITS)
        span_key = padded[:, :length] | codes[0]
        for j in range(1, k):  # k-1 shifted minima over the batch, not a loop over positions
            span_key = torch.minimum(span_key, padded[:, j : j + length] | codes[j])
        centre_score, code = span_key >> _OFFSET_BITS, span_key & ((1 << _OFFSET_BITS) - 1)
        if self.ties == "centre":  # back from priority code to place in the k-span
            code = torch.where(code == 0, centre_place, torch.where(code <= centre_place, code - 1, code))
        index = torch.arange(length, device=input_ids.device)
        best = index + offsets.start + code

        # high set: the ceil(m/2) best-scoring centres of each sequence (leftmost first on ties)
        key = torch.where(centres, centre_score.long() * length + index, _NO_CENTRE)  # int64: no overflow for long rows
        m = centres.sum(dim=1, keepdim=True)
        n_high = (m + 1) // 2
        if self.all_high_if_fewer_than > 0:
            n_high = torch.where(m < self.all_high_if_fewer_than, m, n_high)
        threshold = key.sort(dim=1).values.gather(1, (n_high - 1).clamp(min=0))
        high = centres & (key <= threshold) & (n_high > 0)

        anchor = torch.zeros(batch, length + 1, dtype=torch.bool, device=input_ids.device)
        anchor = anchor.scatter_(1, torch.where(high, best, length), True)[:, :length]
        masked = dilate(centres, offsets) | dilate(anchor, long_span_offsets(k))
        return masked & valid, high, best

    def select(self, input_ids: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        centres = self.centres(input_ids, valid, generator)
        return self.plan(input_ids, valid, centres, generator)[0]


class GlobalPMIMasking(NPMIRankedMasking):
    """Global-PMI, the baseline of GeneMask's successor (Roy et al., ECAI 2024, "Adaptive Masking").

    Per sequence, m = the number of centres drawn as DNABERT draws them (each valid position with
    ``p_center``, 0.15 / 11 so that m 11-token spans mask ~15% of tokens); only the count is used,
    not the draws. The m valid positions whose tokens have the best NPMI rank (ties: leftmost) are
    chosen, and each masks the 2k-1 span around it (``long_span_offsets``), clipped to valid
    positions: the sequence's most collocated k-mers are hidden entirely. Spans may overlap, so the
    masked fraction is a little below 15%.

    ``rank_by`` / ``special_rank``: see :class:`NPMIRankedMasking`. The released code
    (curriculum-GeneMask, ``Global-pretraining-code.py``) ranks position indices and maps a missing
    or 0 rank to 4096, the worst, so ``rank_by=position`` with the default ``special_rank=worst`` is
    its behaviour (up to its tie of positions 1-4 with the worst-ranked k-mer, which matters only
    when m reaches the row's length). It clips spans to positions 1..end (everything between
    [CLS] and the last k-mer), ours to valid positions: the same when no [UNK] lies in a span.
    """

    name = "global_pmi"

    def __init__(self, p_center: float = 0.15 / 11, **kwargs) -> None:
        super().__init__(p_center=p_center, **kwargs)

    def plan(
        self, input_ids: torch.Tensor, valid: torch.Tensor, draws: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked positions and the chosen span centres, given the draws (only their count per row matters).

        Keys ``score * L + position`` (int64) are unique per row and order by rank, then leftmost:
        the m-th smallest key is a threshold that picks exactly the m best valid positions.
        """
        length = input_ids.shape[1]
        if length == 0:  # nothing to choose (and no m-th smallest key to gather)
            return valid.clone(), valid.clone()
        scores = self.position_scores(input_ids, valid, generator)
        index = torch.arange(length, device=input_ids.device)
        key = torch.where(valid, scores.long() * length + index, _NO_CENTRE)
        m = (draws & valid).sum(dim=1, keepdim=True)
        threshold = key.sort(dim=1).values.gather(1, (m - 1).clamp(min=0))
        chosen = valid & (key <= threshold) & (m > 0)
        return dilate(chosen, long_span_offsets(self.k)) & valid, chosen

    def select(self, input_ids: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.plan(input_ids, valid, self.centres(input_ids, valid, generator), generator)[0]


class RandomSpanMasking(GeneMaskMasking):
    """Control for GeneMask: the same centres and span-length mix, but which centres get the long
    span, and where in their k-span it is anchored, is random instead of NPMI-guided."""

    name = "random_span"

    def __init__(self, **kwargs) -> None:
        kwargs.pop("rank_by", None)
        super().__init__(rank_by="random", **kwargs)
