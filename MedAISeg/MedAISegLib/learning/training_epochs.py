"""The epoch loop of :func:`.training.train`: one pass over the data, validation, the best model and the
checkpoint that lets an interrupted run resume."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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


def run_epochs(network, optimizer, scheduler, loader, validate, config, device, state: RunState, checkpoint_path: Path,
               progress, on_epoch) -> str:
    """Epochs from ``state.first_epoch`` to ``config.epochs``: train, ``validate()`` (Dice or None), keep the
    best (``state``), checkpoint, stop after ``config.patience`` epochs without improvement; returns why it
    stopped ("epochs" or "early stop"). ``on_epoch(row)`` and ``progress.update`` after each epoch."""
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    for epoch in range(state.first_epoch, config.epochs + 1):
        epoch_start = time.perf_counter()
        losses = train_epoch(network, loader, loss_fn, optimizer, scaler, device, use_amp, progress)
        scheduler.step()
        val_dice = validate()
        row = {"epoch": epoch, "loss": round(float(np.mean(losses)), 5),
               "val_dice": None if val_dice is None else round(val_dice, 5),
               "learning_rate": optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - epoch_start, 3)}
        state.history.append(row)
        if improves(row, state.best_dice, state.best_loss):
            state.best_dice, state.best_loss, state.best_epoch = row["val_dice"], row["loss"], epoch
            state.best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "best_model": state.best_state,
                    "best_epoch": state.best_epoch, "epoch": epoch, "history": state.history}, checkpoint_path)
        if on_epoch is not None:
            on_epoch(row)
        if progress is not None:
            progress.update(epoch_message(row), epoch / config.epochs)
        if epoch - state.best_epoch >= config.patience:
            return "early stop"
    return "epochs"
