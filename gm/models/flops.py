"""Training FLOPs of our BERT MLM and model FLOPs utilisation (MFU), for benchmarks and targets.

The count follows the usual transformer accounting (Kaplan et al. 2020, "Scaling laws", §2.1;
PaLM, Chowdhery et al. 2022, appendix B; Chinchilla, Hoffmann et al. 2022, appendix F): only
matrix multiplications count, a multiply-add is 2 FLOPs, and the backward pass costs twice the
forward (gradients with respect to activations and to weights), so a training step is 3x forward.
MFU is achieved model FLOPs / peak dense bf16 FLOPs; rematerialisation is not counted (PaLM's
definition), so MFU does not reward recomputation.
"""

from __future__ import annotations

import re
from typing import Any

#: Peak dense (no 2:4 sparsity) bf16 tensor-core FLOP/s, by a substring of
#: ``torch.cuda.get_device_name()``; earlier keys win, so "H100 PCIe" is tried before "H100" (SXM,
#: whose name reads e.g. "NVIDIA H100 80GB HBM3"). Vendor data-sheet figures.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,  # matched as a whole word: not A100, not A10G
    "RTX 4090": 165e12,
}


def training_flops_per_token(
    encoder: dict[str, Any],
    seq_len: int,
    vocab_size: int,
    masked_fraction: float = 0.15,
    head_on_masked_only: bool = True,
) -> float:
    """Training FLOPs (forward + backward) per input position of a BERT MLM step.

    With hidden size h, L layers, FFN size i, sequence length s, vocabulary V and masked share m::

        N     = L * (4 h^2 + 2 h i)             weights of the encoder's linear layers
        dense = 6 N + 12 L h s                  PaLM's 6N + 12 L H Q T, with H Q = h (attention
                                                 scores QK^T and values AV: 2 s h each, fwd)
        head  = 6 (h^2 + h V) * (m or 1)        MLM head: transform dense + decoder to the vocabulary

    ``head_on_masked_only`` (our :meth:`gm.models.mlm.MLMModule.mlm_loss`) runs the head on the masked
    share ``m`` of positions; transformers' ``BertForMaskedLM`` runs it on every position (m = 1).
    Biases, LayerNorm, softmax, GELU and embedding look-ups are elementwise or gathers and are not
    counted (under 1% of the total). Divide achieved FLOP/s by a peak to get MFU.
    """
    hidden = int(encoder["hidden_size"])
    layers = int(encoder["num_hidden_layers"])
    intermediate = int(encoder["intermediate_size"])
    encoder_weights = layers * (4 * hidden**2 + 2 * hidden * intermediate)
    dense = 6 * encoder_weights + 12 * layers * hidden * seq_len
    head_share = masked_fraction if head_on_masked_only else 1.0
    head = 6 * (hidden**2 + hidden * vocab_size) * head_share
    return float(dense + head)


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU from its name; None for a device not in the table."""
    for key, flops in PEAK_BF16_FLOPS.items():
        if re.search(rf"(?<![0-9a-z]){re.escape(key)}(?![0-9a-z])", device_name, flags=re.IGNORECASE):
            return flops
    return None


def mfu(tokens_per_second: float, flops_per_token: float, peak: float | None) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (NaN when the peak is unknown)."""
    if not peak:
        return float("nan")
    return tokens_per_second * flops_per_token / peak
