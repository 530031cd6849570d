"""The epoch loop of :func:`.training.train`: one pass over the data, validation, the best model and the
checkpoint that lets an interrupted run resume; in a multi-process run the same loop on every rank
(:mod:`.distributed`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from MedAISegLib.learning.distributed import SINGLE, DistributedContext, decision_of_rank0, mean_over_ranks
from MedAISegLib.learning.training_history import best_from_history, epoch_message, improves


@dataclass
class RunState:
    """The run's book-keeping: epoch rows, best validation Dice / loss and their epoch, the best weights."""

    history: list
    best_dice: float | None
    best_loss: float | None
    best_epoch: int
    best_state: dict
    first_epoch: int = 1


def resume(checkpoint_path: Path, device, network, optimizer, scheduler) -> RunState:
    """Network, optimiser, scheduler and book-keeping from the checkpoint of an interrupted run."""
    saved = torch.load(str(checkpoint_path), map_location=device, weights_only=True)
    network.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    best_dice, best_loss = best_from_history(saved["history"], int(saved["best_epoch"]))
    return RunState(list(saved["history"]), best_dice, best_loss, int(saved["best_epoch"]), saved["best_model"],
                    int(saved["epoch"]) + 1)


def train_epoch(network, loader, loss_fn, optimizer, scaler, device, use_amp: bool, progress) -> list[float]:
    """One pass over ``loader``; the batch losses (``progress.check()`` before each batch may cancel)."""
    losses = []
    network.train()
    for batch in loader:
        if progress is not None:
            progress.check()
        image, label = batch["image"].to(device), batch["label"].to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss = loss_fn(network(image), label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
    return losses


def _epoch_row(epoch: int, losses: list[float], val_dice, optimizer, seconds: float, context) -> dict:
    """The history row of one epoch; the loss is the mean over every rank's batches."""
    loss = mean_over_ranks(losses, context)
    return {"epoch": epoch, "loss": round(float(loss if loss is not None else np.nan), 5),
            "val_dice": None if val_dice is None else round(val_dice, 5),
            "learning_rate": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)}


def run_epochs(network, optimizer, scheduler, loader, validate, config, device, state: RunState, checkpoint_path: Path,
               progress, on_epoch, model=None, context: DistributedContext = SINGLE) -> str:
    """Epochs from ``state.first_epoch`` to ``config.epochs``: train, ``validate()`` (Dice or None), keep the
    best (``state``), checkpoint, stop after ``config.patience`` epochs without improvement; returns why it
    stopped ("epochs" or "early stop"). ``on_epoch(row)`` and ``progress.update`` after each epoch.

    ``model``: what the batches go through (``network`` inside ``DistributedDataParallel`` in a
    multi-process run, see :mod:`.distributed`); ``network`` holds the weights that are saved. With
    several processes the checkpoint is written by rank 0 only, a cancel is seen at the end of an epoch,
    and rank 0's stop decision is broadcast so every rank stops after the same epoch."""
    from monai.losses import DiceCELoss

    from MedAICommonLib.progress import CancelledError

    model = network if model is None else model
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)  # a DistributedSampler reshuffles
    for epoch in range(state.first_epoch, config.epochs + 1):
        epoch_start = time.perf_counter()
        if set_epoch is not None:
            set_epoch(epoch)
        batch_progress = None if context.distributed else progress
        losses = train_epoch(model, loader, loss_fn, optimizer, scaler, device, use_amp, batch_progress)
        scheduler.step()
        row = _epoch_row(epoch, losses, validate(), optimizer, time.perf_counter() - epoch_start, context)
        state.history.append(row)
        if improves(row, state.best_dice, state.best_loss):
            state.best_dice, state.best_loss, state.best_epoch = row["val_dice"], row["loss"], epoch
            state.best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        if context.is_main:
            torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "best_model": state.best_state,
                        "best_epoch": state.best_epoch, "epoch": epoch, "history": state.history}, checkpoint_path)
        if on_epoch is not None:
            on_epoch(row)
        if progress is not None and not context.distributed:
            progress.update(epoch_message(row), epoch / config.epochs)
        elif progress is not None and progress.callback is not None:  # a cancel is decided below, for all ranks
            progress.callback(epoch_message(row), epoch / config.epochs)
        if context.distributed and decision_of_rank0(progress is not None and progress.cancelled, context):
            raise CancelledError(f"Cancelled after epoch {epoch}")
        if decision_of_rank0(epoch - state.best_epoch >= config.patience, context):
            return "early stop"
    return "epochs"
