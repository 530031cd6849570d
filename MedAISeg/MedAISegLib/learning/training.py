"""Train or fine-tune a MONAI segmentation network on image/label pairs, then export a bundle.

Cases are ``(image, label)`` pairs given as file paths or SimpleITK images (LPS, any grid; the
label on the image's grid or its own). They go through the exact preprocessing the exported
bundle uses (:func:`.export.preprocessing_definition`: RAS orientation, resampling to
``spacing_mm``, z-score), are cached, then sampled as ``roi`` patches balanced between
foreground and background (``RandCropByPosNegLabeld``) and augmented (flips, 90° rotations,
small affine, intensity scale/shift, Gaussian noise; elastic optional). Loss: Dice +
cross-entropy; AdamW with a cosine schedule; mixed precision on CUDA. A validation split is
scored after each epoch with MedAI's sliding window (mean foreground Dice, in [0, 1]); the best
weights are kept, training stops early after ``patience`` epochs without improvement, and a checkpoint
(``checkpoint.pt``, loadable with ``weights_only=True``) allows ``resume``. Cancel (through a
:class:`MedAICommonLib.progress.Progress`) stops at the next step and keeps the best model.
Curves are written as ``training_curves.csv`` and ``.png``. Launched on several processes (``torchrun``
or ``medai train --nproc-per-node N``), each rank trains on its shard of the cases with DDP and rank 0
alone writes the checkpoint, the curves and the bundle (:mod:`.distributed`).

Without a validation case (one case, two with a small ``val_fraction``, or ``val_fraction`` 0)
there is no validation Dice: ``val_dice`` is None in the history and the result, a warning says
so, the best epoch is the one with the lowest training loss (``best_epoch_by``) and the curves
show the loss only. A loss is never reported as a Dice.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from MedAISegLib.inference.export import build_network, build_transforms, bundle_preprocessing, check_roi, export_bundle, \
    network_definition, preprocessing_definition
from MedAISegLib.inference.sliding_window import sliding_window_inference
from MedAISegLib.learning.distributed import SINGLE, DistributedContext, check_shards, join_process_group, \
    leave_process_group, mean_over_ranks, shard_sampler, wrap_model
from MedAISegLib.learning.training_epochs import RunState, resume, run_epochs
from MedAISegLib.learning.training_history import BY_TRAINING_LOSS, BY_VALIDATION_DICE, no_validation_message, write_curves



@dataclass
class TrainingConfig:
    """Training settings (spacing in mm, ROI in voxels at that spacing)."""

    network: str = "segresnet"
    features: int = 16
    spacing_mm: tuple = (1.5, 1.5, 1.5)
    roi: tuple = (64, 64, 64)
    epochs: int = 100
    batch_size: int = 2
    samples_per_case: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    val_fraction: float = 0.2
    patience: int = 20
    seed: int = 0
    amp: bool = True
    augment: bool = True
    elastic: bool = False
    resume: bool = False
    labels: dict = field(default_factory=dict)
    normalization: dict = field(default_factory=lambda: {"type": "zscore"})
    axcodes: str | None = "RAS"
    cache_dir: str | None = None


@dataclass
class TrainingResult:
    """What a run produced: the network (best weights), figures and files."""

    network: torch.nn.Module
    definition: dict | None
    labels: dict
    best_dice: float | None      # validation Dice of the best epoch; None without a validation case
    best_epoch: int
    epochs_run: int
    history: list
    stopped: str
    files: dict
    seconds: float
    best_loss: float | None = None         # training loss of the best epoch
    best_epoch_by: str = BY_VALIDATION_DICE   # or BY_TRAINING_LOSS when no case was held out
    world_size: int = 1                    # processes that trained together (DDP); 1 for a plain run
    backend: str | None = None             # their process-group backend (gloo or nccl); None for one process
    rank: int = 0                          # this process's rank: only rank 0 writes files


def _to_file(item, folder: Path, name: str) -> str:
    if isinstance(item, sitk.Image):
        path = folder / f"{name}.nii.gz"
        sitk.WriteImage(item, str(path))
        return str(path)
    path = Path(item)
    if not path.exists():
        raise ValueError(f"Training file {path} not found.")
    return str(path)


def _label_on_image_grid(image_path: str, label_path: str, folder: Path, name: str) -> str:
    image, label = sitk.ReadImage(image_path), sitk.ReadImage(label_path)
    if image.GetSize() == label.GetSize() and np.allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-3) and \
            np.allclose(image.GetSpacing(), label.GetSpacing()) and \
            np.allclose(image.GetDirection(), label.GetDirection(), atol=1e-4):
        return label_path
    resampled = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    path = folder / f"{name}_label_resampled.nii.gz"
    sitk.WriteImage(resampled, str(path))
    return str(path)


def _augmentations(config: TrainingConfig) -> list:
    from monai import transforms as T

    keys = ["image", "label"]
    roi = [int(r) for r in config.roi]
    steps = [T.SpatialPadd(keys, spatial_size=roi),
             T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=roi, pos=1, neg=1,
                                      num_samples=config.samples_per_case, image_key="image", image_threshold=-1e9)]
    if config.augment:
        steps += [T.RandFlipd(keys, prob=0.5, spatial_axis=0), T.RandFlipd(keys, prob=0.5, spatial_axis=1),
                  T.RandFlipd(keys, prob=0.5, spatial_axis=2), T.RandRotate90d(keys, prob=0.5, max_k=3),
                  T.RandAffined(keys, prob=0.3, rotate_range=[0.26] * 3, scale_range=[0.1] * 3,
                                mode=["bilinear", "nearest"], padding_mode="border"),
                  T.RandScaleIntensityd("image", factors=0.1, prob=0.5),
                  T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
                  T.RandGaussianNoised("image", prob=0.3, std=0.1)]
        if config.elastic:
            steps.append(T.Rand3DElasticd(keys, sigma_range=(5, 8), magnitude_range=(50, 150), prob=0.2,
                                          mode=["bilinear", "nearest"]))
    return steps


def _content_key(item: dict, recipe: str) -> bytes:
    """sha256 of the image and label voxels and geometry plus the preprocessing recipe."""
    import hashlib

    digest = hashlib.sha256(recipe.encode())
    for key in ("image", "label"):
        image = sitk.ReadImage(item[key])
        digest.update(repr((image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(),
                            image.GetPixelIDValue())).encode())
        digest.update(sitk.GetArrayViewFromImage(image).tobytes())
    return digest.hexdigest().encode()


def _dataset(items, transform, config: TrainingConfig):
    """In-memory ``CacheDataset``, or a ``PersistentDataset`` under ``config.cache_dir``: the
    deterministic preprocessing of each case is stored there under a key made of the case's
    content and the preprocessing settings, so later runs on the same cases (files or scene
    nodes) read it back instead of resampling again."""
    import json

    from monai.data import CacheDataset, PersistentDataset

    if not config.cache_dir:
        return CacheDataset(items, transform, progress=False)
    Path(config.cache_dir).mkdir(parents=True, exist_ok=True)
    recipe = json.dumps([config.spacing_mm, config.normalization, config.axcodes, list(config.roi)], default=str)
    keyed = [{**item, "cache_key": _content_key(item, recipe)} for item in items]
    return PersistentDataset(keyed, transform, cache_dir=str(config.cache_dir),
                             hash_func=lambda item: item["cache_key"])


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, classes) -> dict:
    """Dice of each label value in ``classes`` (1.0 when absent from both)."""
    scores = {}
    for c in classes:
        a, b = prediction == c, reference == c
        denom = int(a.sum()) + int(b.sum())
        scores[int(c)] = 1.0 if denom == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denom
    return scores


def _validate(network, cases, roi, device, amp, classes, context: DistributedContext = SINGLE) -> float:
    """Mean foreground Dice of ``network`` on ``cases`` (this rank's share of the validation cases),
    pooled over every rank of a multi-process run."""
    network.eval()
    scores = []
    with torch.no_grad():
        for case in cases:
            result = sliding_window_inference(network, case["image"], roi, overlap=0.25, batch_size=2,
                                              device=device, amp=amp)
            reference = np.rint(case["label"][0].numpy()).astype(np.int64)
            scores.append(np.mean(list(dice_per_class(result.labels, reference, classes).values())))
    network.train()
    dice = mean_over_ranks([float(v) for v in scores], context)
    if dice is None or not 0.0 <= dice <= 1.0:
        raise RuntimeError(f"Validation Dice {dice} is outside [0, 1]; this is a bug, please report it.")
    return dice


def _stage_cases(cases, folder: Path) -> list[dict]:
    """Each (image, label) as files in ``folder``, the label resampled onto its image's grid."""
    items = []
    for index, (image, label) in enumerate(cases):
        image_path = _to_file(image, folder, f"case{index}")
        label_path = _label_on_image_grid(image_path, _to_file(label, folder, f"case{index}_label"), folder,
                                          f"case{index}")
        items.append({"image": image_path, "label": label_path})
    return items


def _initial_network(items: list[dict], config: TrainingConfig, init_bundle):
    """(network, definition, {value: name}) for the label values found in the cases: a new network, or
    ``init_bundle``'s adapted to its own classes plus the cases' new ones."""
    values = sorted({int(v) for it in items for v in np.unique(sitk.GetArrayFromImage(
        sitk.ReadImage(it["label"])))} - {0})
    if not values:
        raise ValueError("The label maps are empty: draw at least one segment before training.")
    if init_bundle is not None:  # the model's own classes stay, the case's new ones are added
        from MedAISegLib.learning.fine_tune import adapt_to_labels, load_initial_model

        initial = init_bundle if not isinstance(init_bundle, (str, Path)) else load_initial_model(init_bundle)
        values = sorted(set(values) | set(initial.labels))
        labels = {v: config.labels.get(v, initial.labels.get(v, f"label {v}")) for v in values}
        network, definition = adapt_to_labels(initial, labels, roi=config.roi)
        return network, definition, labels
    labels = {v: config.labels.get(v, f"label {v}") for v in values}
    definition = network_definition(config.network, 1, max(values) + 1, config.features)
    check_roi(definition, config.roi)
    return build_network(definition), definition, labels


def _split(items: list[dict], seed: int, val_fraction: float) -> tuple[list[dict], list[dict]]:
    """(training, validation) items: a seeded shuffle, at least one validation case from 3 cases on."""
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = int(round(val_fraction * len(items))) if len(items) > 1 else 0
    n_val = min(max(n_val, 1 if len(items) > 2 else 0), len(items) - 1)
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def _data(train_items: list[dict], val_items: list[dict], config: TrainingConfig,
          context: DistributedContext = SINGLE):
    """(shuffled training loader with augmentations, preprocessed validation cases); in a multi-process
    run this rank's shard of the training cases and its share of the validation cases."""
    from monai.data import DataLoader
    from monai.transforms import Compose

    pre = build_transforms(preprocessing_definition(config.spacing_mm, keys=("image", "label"),
                                                    normalization=config.normalization, axcodes=config.axcodes))
    train_ds = _dataset(train_items, Compose([*pre.transforms, *_augmentations(config)]), config)
    val_cases = [pre(item) for item in val_items[context.rank::context.world_size]]
    sampler = shard_sampler(train_ds, context, config.seed)
    loader = DataLoader(train_ds, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=0, generator=torch.Generator().manual_seed(config.seed + context.rank))
    return loader, val_cases


def train(cases, output_dir, config: TrainingConfig | None = None, init_bundle=None, device="cpu",
          progress=None, on_epoch=None) -> TrainingResult:
    """Train on ``cases`` (list of (image, label), files or SimpleITK images); see the module docstring.

    ``init_bundle``: fine-tune from this model — a bundle folder, a TorchScript file with a model
    card, or a :class:`.fine_tune.InitialModel` (see :mod:`.fine_tune`; another label set adapts the
    output layer). ``config.cache_dir``: keep the preprocessed cases on disk (MONAI
    ``PersistentDataset``) instead of in memory.
    ``progress``: a ``Progress`` (stage, fraction; cancel keeps the best model); ``on_epoch``:
    called with each epoch's history row (epoch, loss, val_dice (None without a validation case),
    learning_rate, seconds).
    """
    from monai.utils import set_determinism

    from MedAICommonLib.notices import warn
    from MedAICommonLib.progress import CancelledError

    config = config or TrainingConfig()
    if len(cases) < 1:
        raise ValueError("Training needs at least one image/label pair.")
    start, output_dir = time.perf_counter(), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    context, device = join_process_group(torch.device(device))
    set_determinism(seed=config.seed + context.rank)
    rank_progress, rank_on_epoch = (progress, on_epoch) if context.is_main else (None, None)
    tmp = tempfile.TemporaryDirectory(prefix="medai-train-")
    try:
        items = _stage_cases(cases, Path(tmp.name))
        network, definition, labels = _initial_network(items, config, init_bundle)
        network = network.to(device)
        train_items, val_items = _split(items, config.seed, config.val_fraction)
        check_shards(len(train_items), context.world_size)
        loader, val_cases = _data(train_items, val_items, config, context)
        if not val_items and context.is_main:
            warn(no_validation_message(len(items)))
        optimizer, scheduler, state = _optimisation(network, config, checkpoint_path := output_dir / "checkpoint.pt",
                                                    device)
        model = wrap_model(network, context, device)

        def validate():
            return _validate(network, val_cases, config.roi, device, config.amp, list(labels), context) \
                if val_items else None

        try:
            stopped = run_epochs(network, optimizer, scheduler, loader, validate, config, device, state,
                                 checkpoint_path, rank_progress, rank_on_epoch, model=model, context=context)
        except CancelledError:
            stopped = "cancelled"
        network.load_state_dict(state.best_state)
        network.eval()
        files = write_curves(state.history, output_dir) if state.history and context.is_main else {}
        files["checkpoint"] = str(checkpoint_path)
    finally:
        tmp.cleanup()
        leave_process_group(context)
    return TrainingResult(network=network, definition=definition, labels=labels, best_dice=state.best_dice,
                          best_epoch=state.best_epoch, epochs_run=len(state.history), history=state.history,
                          stopped=stopped, files=files, seconds=round(time.perf_counter() - start, 2),
                          best_loss=state.best_loss, best_epoch_by=BY_VALIDATION_DICE if val_items else BY_TRAINING_LOSS,
                          world_size=context.world_size, backend=context.backend, rank=context.rank)


def _optimisation(network, config: TrainingConfig, checkpoint_path: Path, device):
    """(AdamW, cosine schedule, run state): fresh, or from ``checkpoint_path`` with ``config.resume``."""
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    state = RunState([], None, None, 0, {k: v.detach().clone() for k, v in network.state_dict().items()})
    if config.resume and checkpoint_path.exists():
        state = resume(checkpoint_path, device, network, optimizer, scheduler)
    return optimizer, scheduler, state


def train_and_export(cases, bundle_dir, config: TrainingConfig | None = None, init_bundle=None, device="cpu",
                     progress=None, on_epoch=None, name: str = "MedAI trained model") -> TrainingResult:
    """:func:`train`, then :func:`.export.export_bundle` of the best model into ``bundle_dir``
    (curves and checkpoint in ``bundle_dir/logs``); in a multi-process run only rank 0 exports."""
    config = config or TrainingConfig()
    init_bundle = adopt_initial_model(config, init_bundle)
    result = train(cases, Path(bundle_dir) / "logs", config, init_bundle, device, progress, on_epoch)
    if result.rank != 0:  # one bundle, written by rank 0
        return result
    summary = {k: v for k, v in asdict(config).items() if k != "labels"}
    summary.update({"best_val_dice": result.best_dice, "best_epoch": result.best_epoch,
                    "best_epoch_by": result.best_epoch_by, "best_training_loss": result.best_loss,
                    "epochs_run": result.epochs_run, "stopped": result.stopped, "cases": len(cases),
                    "init_model": init_bundle.source if init_bundle is not None else None,
                    "world_size": result.world_size, "backend": result.backend})
    export_bundle(bundle_dir, result.network, result.definition, result.labels, config.spacing_mm, config.roi,
                  name=name, training=summary, normalization=config.normalization, axcodes=config.axcodes)
    result.files["bundle"] = str(bundle_dir)
    return result


def adopt_initial_model(config: TrainingConfig, init_bundle):
    """``init_bundle`` loaded (a path becomes a :class:`.fine_tune.InitialModel`; None stays None), its grid,
    patch size and normalisation written into ``config``: fine-tuning keeps the starting model's."""
    if init_bundle is None:
        return None
    from MedAISegLib.learning.fine_tune import load_initial_model

    init_bundle = load_initial_model(init_bundle) if isinstance(init_bundle, (str, Path)) else init_bundle
    config.spacing_mm = init_bundle.spacing_mm
    config.roi = tuple(init_bundle.roi)
    config.normalization, config.axcodes = dict(init_bundle.normalization), init_bundle.axcodes
    return init_bundle


def preprocess_for_bundle(image, bundle, with_affine: bool = False):
    """``(C, X, Y, Z)`` tensor of ``image`` (file or SimpleITK) after ``bundle``'s own preprocessing
    (``configs/inference.json``); with ``with_affine`` also its 4x4 voxel (i, j, k) to RAS (mm) matrix."""
    pre = bundle_preprocessing(bundle)
    with tempfile.TemporaryDirectory(prefix="medai-pre-") as tmp:
        path = _to_file(image, Path(tmp), "image")
        data = pre({"image": path})["image"]
    tensor = data.as_tensor()
    return (tensor, np.asarray(data.affine, dtype=float)) if with_affine else tensor
