"""One epoch's figures, the choice of the best epoch, and the training curves.

A history row is ``{epoch, loss, val_dice, learning_rate, seconds}``: ``loss`` the mean training
loss (Dice + cross-entropy) of the epoch, ``val_dice`` the mean foreground Dice (in [0, 1]) on the
validation cases, or None when no case was held out. Without validation the best epoch is chosen
by the lowest training loss, and nothing calls that loss a Dice.
"""

from __future__ import annotations

import csv
from pathlib import Path

BY_VALIDATION_DICE = "validation Dice"
BY_TRAINING_LOSS = "training loss"


def no_validation_message(n_cases: int) -> str:
    """The warning given when no case is held out for validation."""
    return (
        f"no validation case: all {n_cases} case(s) are used for training, so no validation Dice is computed "
        "and the best epoch is the one with the lowest training loss; give 3 or more cases (or 2 with "
        "--val-fraction 0.5) to score the model on a held-out case."
    )


def improves(row: dict, best_dice: float | None, best_loss: float | None) -> bool:
    """True when ``row`` beats the best epoch so far: by validation Dice (higher) when the epoch was
    validated, else by training loss (lower)."""
    if row["val_dice"] is not None:
        return best_dice is None or row["val_dice"] > best_dice
    return best_loss is None or row["loss"] < best_loss


def best_from_history(history: list, best_epoch: int) -> tuple[float | None, float | None]:
    """(validation Dice, training loss) of ``best_epoch`` in a checkpoint's history."""
    row = next((r for r in history if r["epoch"] == best_epoch), None)
    return (None, None) if row is None else (row["val_dice"], row["loss"])


def epoch_message(row: dict) -> str:
    """Progress text of one epoch: its loss, and its validation Dice only when there was a validation case."""
    if row["val_dice"] is None:
        return f"epoch {row['epoch']}: training loss {row['loss']:.3f} (no validation case)"
    return f"epoch {row['epoch']}: training loss {row['loss']:.3f}, validation Dice {row['val_dice']:.3f}"


def write_curves(history: list, folder) -> dict:
    """``training_curves.csv`` and ``.png`` (loss and, where there is one, validation Dice per epoch)
    in ``folder``; an epoch without validation has an empty ``val_dice`` cell and no point."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = folder / "training_curves.csv", folder / "training_curves.png"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "loss", "val_dice", "learning_rate", "seconds"])
        writer.writeheader()
        writer.writerows(history)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], label="training loss (Dice+CE)")
    scored = [h for h in history if h.get("val_dice") is not None]
    if scored:
        ax.plot([h["epoch"] for h in scored], [h["val_dice"] for h in scored], label="validation Dice")
    else:
        ax.set_title("no validation case: training loss only")
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return {"curves_csv": str(csv_path), "curves_png": str(png_path)}
