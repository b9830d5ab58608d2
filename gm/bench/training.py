"""Training helpers: model and optimiser configs, and one training run three ways (Lightning, a plain
PyTorch loop, ``transformers.Trainer``), timed by the ``train``, ``padding`` and ``gpu`` parts."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from gm.bench.common import BATCH, K, ROOT, StepClock


# ------------------------------------------------------------------------------------------ training helpers
def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def model_config(name: str) -> dict[str, Any]:
    """``conf/model/<name>.yaml``: the encoder sizes (BertConfig fields)."""
    return _yaml(ROOT / "conf" / "model" / f"{name}.yaml")


def optim_config() -> dict[str, Any]:
    """``conf/optim/adamw.yaml``: lr, betas, eps, weight decay, warm-up (fraction or steps)."""
    return _yaml(ROOT / "conf" / "optim" / "adamw.yaml")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _warmup_steps(fraction_or_steps: float, total: int) -> int:
    return int(min(fraction_or_steps * total if 0 <= fraction_or_steps < 1 else fraction_or_steps, total))


def plain_run(encoder: dict, batches: list[dict], device: torch.device, compile_encoder: bool = False) -> float:
    """A hand-written PyTorch training loop over ``batches``; seconds of the steps after the warm-up.

    The same MLMModule (fresh, same init seed), masking, AdamW groups, linear warm-up and gradient
    clipping as a Lightning run; bf16 autocast and fused AdamW on CUDA.
    """
    from transformers import get_linear_schedule_with_warmup

    from gm.masking.strategies import KmerSpanMasking
    from gm.models.mlm import MLMModule, weight_decay_groups

    optim = optim_config()
    torch.manual_seed(0)
    module = MLMModule(encoder, KmerSpanMasking(), **optim).to(device)
    module.train()
    if compile_encoder:
        module.model.bert.compile()  # in place, as MLMModule(compile=True) does; the head stays eager
    optimizer = torch.optim.AdamW(
        weight_decay_groups(module.model, optim["weight_decay"]), lr=optim["lr"], betas=tuple(optim["betas"]),
        eps=optim["eps"], fused=device.type == "cuda",
    )
    warmup = _warmup_steps(optim["warmup_steps"], len(batches))
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, len(batches))
    generator = torch.Generator(device=device).manual_seed(0)
    clock = StepClock(device, len(batches))
    for step, batch in enumerate(batches):
        input_ids = batch["input_ids"].to(device, non_blocking=True)
        attention_mask = batch["attention_mask"].to(device, non_blocking=True)
        with _autocast(device):
            masked = module.mask({"input_ids": input_ids}, generator)
            out = module.mlm_loss(masked, attention_mask, accuracy=False)  # a bare loop logs nothing
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick(step)
    return clock.seconds


def lightning_run(encoder: dict, batches: list[dict], device: torch.device, root: str) -> float:
    """``pytorch_lightning.Trainer.fit`` of MLMModule over ``batches``; seconds after the warm-up."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from gm.masking.strategies import KmerSpanMasking
    from gm.models.mlm import MLMModule

    clock = StepClock(device, len(batches))

    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            clock.tick(batch_idx)

    torch.manual_seed(0)
    module = MLMModule(encoder, KmerSpanMasking(), **optim_config())
    trainer = pl.Trainer(
        max_steps=len(batches), accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true", gradient_clip_val=1.0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Clock()], default_root_dir=root,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return clock.seconds


class _Windows(torch.utils.data.Dataset):
    """Token-id lists, one item per window, for transformers' Trainer."""

    def __init__(self, windows: list[list[int]]) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {"input_ids": self.windows[index]}


def hf_windows(batches: list[dict]) -> list[list[int]]:
    """The batches' windows, unpadded, in batch order (attention masks are prefixes)."""
    return [
        row_ids[:n].tolist()
        for b in batches
        for row_ids, n in zip(b["input_ids"], b["attention_mask"].sum(1).tolist())
    ]


def hf_collator(tokenizer):
    """DNABERT-style MLM collator (15% of tokens); pads to a multiple of 8 as our data module does."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, pad_to_multiple_of=8)


def check_same_batches(batches: list[dict], windows: list[list[int]], tokenizer) -> None:
    """The HF pipeline's batches hold the same tokens in tensors of the same shapes as ours."""
    collator = hf_collator(tokenizer)
    for index, batch in enumerate(batches):
        collated = collator([{"input_ids": w} for w in windows[index * BATCH : (index + 1) * BATCH]])
        assert collated["input_ids"].shape == batch["input_ids"].shape, (index, collated["input_ids"].shape)
        assert torch.equal(collated["attention_mask"], batch["attention_mask"]), index


def hf_run(encoder: dict, windows: list[list[int]], steps: int, device: torch.device, tokenizer, root: str) -> float:
    """transformers' Trainer, DNABERT-style: the collator masks 15% of tokens, head on every position.

    The same windows in the same batches (sequential sampler, batch size 10) and the same
    optimiser settings; the collator pads to a multiple of 8 as our data module does, so both
    see tensors of the same shapes.
    """
    from transformers import (
        BertForMaskedLM, PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments,
    )

    from gm.models.mlm import build_bert_config

    clock = StepClock(device, steps)

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.tick(state.global_step - 1)

    optim = optim_config()
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = BertForMaskedLM(build_bert_config(K, **encoder))
    args = TrainingArguments(
        output_dir=root, use_cpu=not cuda, bf16=cuda, report_to=[], per_device_train_batch_size=BATCH,
        max_steps=steps, save_strategy="no", logging_strategy="no", dataloader_num_workers=0,
        dataloader_pin_memory=cuda, max_grad_norm=1.0, learning_rate=optim["lr"], warmup_steps=optim["warmup_steps"],
        weight_decay=optim["weight_decay"], adam_beta1=optim["betas"][0], adam_beta2=optim["betas"][1],
        adam_epsilon=optim["eps"], lr_scheduler_type="linear", optim="adamw_torch_fused" if cuda else "adamw_torch",
        train_sampling_strategy="sequential", disable_tqdm=True, seed=0,
    )
    if cuda:
        _ = args.device
        args._n_gpu = 1  # one GPU, as the others use: several would make the Trainer wrap the model in DataParallel
    trainer = Trainer(model=model, args=args, train_dataset=_Windows(windows), data_collator=hf_collator(tokenizer),
                      processing_class=tokenizer, callbacks=[Clock()])
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)  # it would print the final metrics into the table
    trainer.train()
    return clock.seconds


def _quiet_frameworks() -> None:
    """Keep Lightning's and transformers' start-up chatter out of the table (after their imports set levels)."""
    import pytorch_lightning  # noqa: F401  (sets its logger to INFO on import)
    from transformers.utils import logging as hf_logging

    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    for module in ("pytorch_lightning", "lightning_fabric", "transformers", "torch.utils.data"):
        warnings.filterwarnings("ignore", module=module)


def _train_repeats(repeats: int) -> int:
    """Training runs are long: half the repeats, at least 2 (1 when asked for 1)."""
    return 1 if repeats <= 1 else max(2, repeats // 2)


