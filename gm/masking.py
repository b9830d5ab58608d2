"""Masking strategies for MLM on overlapping k-mers, run on the batch's device (spec §2).

Every strategy answers one question, *which positions are masked* (:meth:`MaskingStrategy.select`),
as tensor operations over the whole batch: no Python loop over sequences or centres and no
host-device synchronisation. Replacement of the selected positions (BERT's 80/10/10) and the
labels are shared by all strategies in :meth:`MaskingStrategy.__call__`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gm.tokenizer import MASK_ID, NUM_SPECIAL
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
    """``out[b, p]`` is True when ``centres[b, p - o]`` is True for some offset ``o``."""
    out = torch.zeros_like(centres)
    length = centres.shape[1]
    for o in offsets:  # k shifts of the whole batch, not a loop over positions
        if o >= 0:
            out[:, o:] |= centres[:, : length - o]
        else:
            out[:, : length + o] |= centres[:, -o:]
    return out


class MaskingStrategy:
    """Base class: choose positions with :meth:`select`, then replace them BERT-style.

    ``mask_token_prob`` of the masked positions become ``[MASK]``, ``random_token_prob`` a random
    k-mer, the rest keep their token.
    """

    name = "base"

    def __init__(self, k: int = 6, vocab_size: int | None = None, mask_token_prob: float = 0.8, random_token_prob: float = 0.1) -> None:
        if not 3 <= k <= 6:
            raise GMError(f"masking: k must be between 3 and 6, got {k}")
        if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1:
            raise GMError(
                f"masking: mask_token_prob={mask_token_prob} and random_token_prob={random_token_prob} must be "
                "non-negative and sum to at most 1"
            )
        self.k = k
        self.vocab_size = vocab_size if vocab_size is not None else 4**k + NUM_SPECIAL
        self.mask_token_prob = mask_token_prob
        self.random_token_prob = random_token_prob

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
        """BERT's per-token replacement of the masked positions."""
        draw = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
        random_ids = torch.randint(NUM_SPECIAL, self.vocab_size, input_ids.shape, device=input_ids.device, generator=generator)
        out = torch.where(masked & (draw < self.mask_token_prob), torch.full_like(input_ids, MASK_ID), input_ids)
        use_random = masked & (draw >= self.mask_token_prob) & (draw < self.mask_token_prob + self.random_token_prob)
        return torch.where(use_random, random_ids, out)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class BertMasking(MaskingStrategy):
    """Original BERT: every valid token is masked independently with ``mlm_probability``.

    On overlapping k-mers this is the easy task GeneMask fixes: a masked k-mer is readable from
    its unmasked neighbours.
    """

    name = "bert"

    def __init__(self, mlm_probability: float = 0.15, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= mlm_probability <= 1.0:
            raise GMError(f"masking.mlm_probability must be in [0, 1], got {mlm_probability}")
        self.mlm_probability = mlm_probability

    def select(self, input_ids: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return valid & (torch.rand(input_ids.shape, device=input_ids.device, generator=generator) < self.mlm_probability)


class KmerSpanMasking(MaskingStrategy):
    """DNABERT: centres drawn with ``p_center`` (0.025), each masking its k contiguous k-mers.

    6 masked 6-mers around a centre still leave all but one of its bases readable from the
    neighbours; GeneMask's longer spans close that gap.
    """

    name = "kmer_span"

    def __init__(self, p_center: float = 0.025, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= p_center <= 1.0:
            raise GMError(f"masking.p_center must be in [0, 1], got {p_center}")
        self.p_center = p_center

    def centres(self, input_ids: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return valid & (torch.rand(input_ids.shape, device=input_ids.device, generator=generator) < self.p_center)

    def select(self, input_ids: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return dilate(self.centres(input_ids, valid, generator), kmer_span_offsets(self.k))
