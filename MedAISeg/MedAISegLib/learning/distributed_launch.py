"""``medai train --nproc-per-node N``: N training processes on this machine, started by PyTorch's elastic
agent, the engine behind ``torchrun`` (``torch.distributed.launcher.api.elastic_launch``, standalone c10d
rendezvous on a free local port, no restarts).

The cases are written once to a private folder and every process reads them from there; each one runs
:func:`.training.train_and_export`, which joins the process group from the environment the agent set
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; see :mod:`.distributed`), so ``torchrun --nproc-per-node N -m
MedAICommonLib.cli train ...`` runs the very same code. Rank 0 sends its progress and epoch rows back
through a queue, writes the one bundle and returns its figures and best weights; the launching process
turns them into the :class:`.training.TrainingResult` a single-process run returns. A failure on any rank
stops every rank and is raised here as one error naming the rank; Ctrl-C is a ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue as queue_module
import signal
import tempfile
import threading
import uuid
import warnings
from pathlib import Path

import torch

from MedAISegLib.learning.distributed import check_shards, current_rank, launched_ranks, process_device
from MedAISegLib.learning.training import (
    TrainingConfig,
    TrainingResult,
    _initial_network,
    _split,
    _stage_cases,
    adopt_initial_model,
    train_and_export,
)

_RESULT_FIELDS = (
    "best_dice",
    "best_epoch",
    "epochs_run",
    "history",
    "stopped",
    "files",
    "seconds",
    "best_loss",
    "best_epoch_by",
    "world_size",
    "backend",
)


def launch_training(
    cases,
    bundle_dir,
    config: TrainingConfig,
    nproc_per_node: int,
    init_bundle=None,
    device="cpu",
    progress=None,
    on_epoch=None,
    name: str = "MedAI trained model",
) -> TrainingResult:
    """:func:`.training.train_and_export` on ``nproc_per_node`` processes of this machine (DDP; Gloo on the
    CPU, NCCL with one GPU each on CUDA). ``cases``: (image, label) pairs, files or SimpleITK images;
    ``config.batch_size`` is per process, so a step sees ``nproc_per_node`` times as many patches.
    ``init_bundle``: a bundle folder or TorchScript file to fine-tune from (a path). ``progress`` and
    ``on_epoch`` receive rank 0's updates; a cancel stops every rank at the end of the epoch."""
    if nproc_per_node < 1:
        raise ValueError(f"--nproc-per-node must be 1 or more, not {nproc_per_node}.")
    if launched_ranks() is not None:
        raise ValueError(
            "This process already belongs to a multi-process run (torchrun set WORLD_SIZE): "
            "leave out --nproc-per-node, torchrun's own --nproc-per-node decides."
        )
    if init_bundle is not None and not isinstance(init_bundle, (str, Path)):
        raise ValueError("A multi-process run fine-tunes from a bundle folder or TorchScript file path.")
    device = torch.device(device)
    process_device(device, 0, nproc_per_node)  # too few GPUs: fail before anything starts
    initial = adopt_initial_model(config, init_bundle)
    with tempfile.TemporaryDirectory(prefix="medai-ddp-") as tmp:
        items = _stage_cases(cases, Path(tmp))
        check_shards(len(_split(items, config.seed, config.val_fraction)[0]), nproc_per_node)
        network, definition, labels = _initial_network(items, config, initial)
        pairs = [(item["image"], item["label"]) for item in items]
        threads = max(1, torch.get_num_threads() // nproc_per_node)
        summary = _launch(
            nproc_per_node,
            Path(tmp),
            progress,
            on_epoch,
            config.epochs,
            (
                pairs,
                str(bundle_dir),
                config,
                None if init_bundle is None else str(init_bundle),
                str(device),
                name,
                threads,
            ),
        )
    for message in summary["warnings"]:
        from MedAICommonLib.notices import warn

        warn(message)
    network.load_state_dict(torch.load(io.BytesIO(summary["weights"]), map_location="cpu", weights_only=True))
    network.eval()
    return TrainingResult(
        network=network, definition=definition, labels=labels, **{key: summary[key] for key in _RESULT_FIELDS}
    )


def _launch(nproc: int, folder: Path, progress, on_epoch, epochs: int, args: tuple) -> dict:
    """Run :func:`_train_rank` on ``nproc`` processes; rank 0's summary. Progress and epoch rows are relayed
    while they run; the caller's cancel reaches rank 0 through an event."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    messages, cancel = context.Queue(), context.Event()
    relay = threading.Thread(target=_relay, args=(messages, cancel, progress, on_epoch), daemon=True)
    relay.start()
    try:
        outputs = _run_agent(nproc, folder, (*args, messages, cancel))
    finally:
        messages.put(None)
        relay.join()
    return outputs[0]


def _run_agent(nproc: int, folder: Path, args: tuple) -> dict:
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(folder / "logs")),
    )
    with _quiet_agent():
        try:
            return elastic_launch(config, _train_rank)(*args)
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            raise _rank_error(rank, failure.message) from None
        except SignalException as exc:
            if exc.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise RuntimeError(f"Training stopped: the launcher received signal {exc.sigval.name}.") from None


def _rank_error(rank: int, message) -> Exception:
    """The error of a failed rank as one exception: a ValueError stays a ValueError (bad input)."""
    text = message.get("message", str(message)) if isinstance(message, dict) else str(message)
    kind, _, detail = text.partition(": ")
    if kind == "ValueError" and detail:
        return ValueError(f"{detail} (training process of rank {rank})")
    return RuntimeError(f"Training process of rank {rank} failed: {text}")


@contextlib.contextmanager
def _quiet_agent():
    """The elastic agent's own log off the terminal: its failures come back as one error."""
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _relay(messages, cancel, progress, on_epoch) -> None:
    """Hand rank 0's messages to ``progress`` / ``on_epoch`` until None arrives; pass a cancel on to ``cancel``."""
    while True:
        if progress is not None and progress.cancelled:
            cancel.set()
        try:
            item = messages.get(timeout=0.5)
        except queue_module.Empty:
            continue
        if item is None:
            return
        kind, payload = item
        with contextlib.suppress(Exception):  # a failing callback must not stop the relay
            if kind == "epoch" and on_epoch is not None:
                on_epoch(payload)
            elif kind == "progress" and progress is not None and not progress.cancelled:
                progress.update(*payload)


class _Forward:
    """A picklable callback that puts ``(kind, arguments)`` on the launcher's queue."""

    def __init__(self, messages, kind: str) -> None:
        self.messages, self.kind = messages, kind

    def __call__(self, *payload) -> None:
        self.messages.put((self.kind, payload[0] if self.kind == "epoch" else payload))


def _train_rank(pairs, bundle_dir, config, init_bundle, device, name, threads, messages, cancel):
    """One training process (the agent sets its rank in the environment); rank 0 returns its summary."""
    from MedAICommonLib.notices import MedAIWarning
    from MedAICommonLib.progress import Progress

    torch.set_num_threads(threads)
    main = current_rank() == 0
    progress = Progress(_Forward(messages, "progress"), _cancel=cancel) if main else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MedAIWarning)
        result = train_and_export(
            pairs,
            bundle_dir,
            config,
            init_bundle,
            device,
            progress,
            _Forward(messages, "epoch") if main else None,
            name,
        )
    if result.rank != 0:
        return None
    buffer = io.BytesIO()
    torch.save({key: value.cpu() for key, value in result.network.state_dict().items()}, buffer)
    seen = [str(w.message) for w in caught if issubclass(w.category, MedAIWarning)]
    return {
        "weights": buffer.getvalue(),
        "warnings": list(dict.fromkeys(seen)),
        **{key: getattr(result, key) for key in _RESULT_FIELDS},
    }
