"""``medai train`` and ``medai export``: train a model on labelled cases, compressed exports.

``medai train --images FILE... --labels FILE... --output BUNDLE_DIR [--epochs N] [--network NAME]``
reads volumes and label maps (or ``.seg.nrrd`` segmentations) through Slicer's storage nodes,
trains (or fine-tunes with ``--init-bundle`` from a bundle or a TorchScript model with a card) and writes a MONAI bundle that ``medai segment
--model BUNDLE_DIR`` runs. ``medai export BUNDLE_DIR --sample FILE... [--fp16] [--onnx]`` adds
fp16 TorchScript / ONNX files to the bundle and reports their label agreement and speed.
``medai fine-tune VOLUME SEGMENTATION --model MODEL --output BUNDLE_DIR`` is "Fine-tune on this case"
(one corrected case, the panel runs it in a worker process).

``medai train --nproc-per-node N`` trains data-parallel on N processes of this machine (DDP: Gloo on the
CPU, NCCL with one GPU per process); ``torchrun --nproc-per-node N [--nnodes ...] -m MedAICommonLib.cli
train ...`` runs the same code on one or several nodes. Rank 0 alone writes the bundle and the report.
"""

from __future__ import annotations

from pathlib import Path

from MedAICommonLib.cli.inputs import require_inputs
from MedAICommonLib.cli.progress_bar import progress_printer
from MedAICommonLib.devices import select_device
from MedAICommonLib.optional import require_packages
from MedAICommonLib.progress import Progress

from MedAISegLib.results import TrainingRunResult

# torch, MONAI, the bridge and the training Logic are imported by the commands once their inputs are checked:
# ``medai train --help`` and a refused input never pay for them.

#: the networks ``--network`` offers (``MedAISegLib.inference.export.NETWORKS``, which imports torch)
NETWORKS = ("segresnet", "unet", "dynunet", "swinunetr")

# best_val_dice is null when no case was held out (then best_epoch_by is "training loss")
TRAINING_METRICS = ("best_val_dice", "best_epoch", "best_epoch_by", "best_training_loss", "epochs_run", "stopped",
                    "world_size", "backend")


def register(subparsers, add_common_options) -> None:
    """Add ``train``, ``fine-tune`` and ``export``."""
    p = subparsers.add_parser("train", help="train (or fine-tune) a segmentation model on labelled volumes")
    p.add_argument("--images", nargs="+", required=True, metavar="FILE", help="training volumes")
    p.add_argument("--labels", nargs="+", required=True, metavar="FILE",
                   help="label maps or .seg.nrrd segmentations, one per image, in the same order")
    p.add_argument("--output", required=True, metavar="BUNDLE_DIR", help="folder of the exported MONAI bundle")
    p.add_argument("--epochs", type=int, default=100, metavar="N")
    p.add_argument("--network", default="segresnet", choices=NETWORKS, metavar="NAME",
                   help=f"one of {', '.join(NETWORKS)} (default segresnet)")
    p.add_argument("--init-bundle", metavar="MODEL",
                   help="fine-tune from this model: a bundle folder or a TorchScript file with a model card "
                        "(its spacing, patch size and normalisation are kept; new label values add output channels)")
    p.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 1.5], metavar="MM", help="training spacing")
    p.add_argument("--roi", type=int, nargs=3, default=[64, 64, 64], metavar="VOXELS", help="patch size")
    p.add_argument("--features", type=int, default=16, help="channels of the first network level")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--samples-per-case", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--patience", type=int, default=20, help="early stop after N epochs without improvement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--elastic", action="store_true", help="add elastic deformation to the augmentation")
    p.add_argument("--resume", action="store_true", help="continue from BUNDLE_DIR/logs/checkpoint.pt")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="keep the preprocessed cases on disk here (MONAI PersistentDataset) and reuse them next time")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="train data-parallel (PyTorch DDP) on N processes of this machine: one GPU each with "
                        "NCCL on CUDA, Gloo on the CPU; --batch-size is per process and each process needs at "
                        "least one training case. Rank 0 writes the one bundle. For several nodes run "
                        "'torchrun --nnodes M --nproc-per-node N ... -m MedAICommonLib.cli train ...' instead "
                        "(default 1)")
    add_common_options(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("fine-tune", help="fine-tune a model on one corrected case (volume + segmentation)")
    p.add_argument("volume", help="the case's volume file")
    p.add_argument("segmentation", help="its corrected segmentation (.seg.nrrd) or label map")
    p.add_argument("--model", required=True, metavar="MODEL", help="bundle folder or TorchScript file with a card")
    p.add_argument("--output", required=True, metavar="BUNDLE_DIR",
                   help="folder of the fine-tuned bundle (may be the model's own bundle folder)")
    p.add_argument("--epochs", type=int, default=20, metavar="N")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    add_common_options(p)
    p.set_defaults(func=cmd_fine_tune)

    p = subparsers.add_parser("export", help="fp16 TorchScript / ONNX exports of a bundle, checked and timed")
    p.add_argument("bundle", metavar="BUNDLE_DIR")
    p.add_argument("--sample", nargs="+", required=True, metavar="FILE", help="volumes to compare the exports on")
    p.add_argument("--fp16", action="store_true", help="write models/model_fp16.ts")
    p.add_argument("--onnx", action="store_true", help="write models/model.onnx (onnxruntime, CPU)")
    p.add_argument("--repeat", type=int, default=1, help="timing repeats (best of N)")
    p.add_argument("--device", default="auto", help="device of the fp32 / fp16 runs")
    p.add_argument("--trust-bundle", action="store_true",
                   help="trust the bundle as it is now (its configs can run Python code; its preprocessing runs)")
    add_common_options(p)
    p.set_defaults(func=cmd_export)


def _load_labels(scene, path):
    from MedAICommonLib import bridge

    name = str(path).lower()
    if name.endswith(".seg.nrrd") or name.endswith(".seg.nii.gz"):
        return bridge.load_segmentation(scene, path)
    return bridge.load_volume(scene, path, labelmap=True)


def cmd_train(args, report) -> int:
    """``medai train``."""
    if len(args.images) != len(args.labels):
        raise ValueError(f"Give one --labels file per --images file ({len(args.images)} images, "
                         f"{len(args.labels)} labels).")
    require_inputs(*args.images, *args.labels, args.init_bundle)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAISegLib.learning.distributed import current_rank
    from MedAISegLib.learning.training import TrainingConfig
    from MedAISegLib.training_logic import MedAITrainingLogic

    scene = get_scene()
    report.inputs.update({"images": [str(p) for p in args.images], "labels": [str(p) for p in args.labels]})
    with report.timed("load"):
        volumes = [bridge.load_volume(scene, p) for p in args.images]
        labels = [_load_labels(scene, p) for p in args.labels]
    config = TrainingConfig(network=args.network, features=args.features, spacing_mm=tuple(args.spacing),
                            roi=tuple(args.roi), epochs=args.epochs, batch_size=args.batch_size,
                            samples_per_case=args.samples_per_case, learning_rate=args.learning_rate,
                            val_fraction=args.val_fraction, patience=args.patience, seed=args.seed,
                            augment=not args.no_augment, elastic=args.elastic, resume=args.resume,
                            cache_dir=args.cache_dir)
    report.parameters.update({k: v for k, v in vars(config).items() if k != "labels"})
    report.parameters["init_bundle"] = args.init_bundle
    rank = current_rank()
    if rank != 0:  # under torchrun: rank 0 writes the report
        args.report = None
    logic = MedAITrainingLogic(scene)
    with report.timed("train"), progress_printer() as callback:
        result = logic.train(volumes, labels, args.output, config, init_bundle=args.init_bundle, device=args.device,
                             progress=Progress(callback if rank == 0 else None), nproc_per_node=args.nproc_per_node)
    report.parameters.update({"nproc_per_node": args.nproc_per_node, "world_size": result.world_size,
                              "backend": result.backend})
    run = logic.last_result_as(TrainingRunResult)
    report.device = run.device
    report.outputs.update({"bundle": str(Path(args.output)), **result.files})
    report.metrics.update({k: getattr(run, k) for k in TRAINING_METRICS})
    report.metrics["labels"] = {str(k): v for k, v in result.labels.items()}
    return 0


def cmd_fine_tune(args, report) -> int:
    """``medai fine-tune``."""
    require_inputs(args.volume, args.segmentation, args.model)
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAISegLib.training_logic import MedAITrainingLogic

    scene = get_scene()
    report.inputs.update({"volume": str(args.volume), "segmentation": str(args.segmentation), "model": str(args.model)})
    with report.timed("load"):
        volume = bridge.load_volume(scene, args.volume)
        labels = _load_labels(scene, args.segmentation)
    report.parameters.update({"epochs": args.epochs, "learning_rate": args.learning_rate})
    logic = MedAITrainingLogic(scene)
    with report.timed("fine-tune"), progress_printer() as callback:
        result = logic.fine_tune_on_case(volume, labels, args.model, args.output, epochs=args.epochs,
                                         device=args.device, learning_rate=args.learning_rate,
                                         progress=Progress(callback))
    run = logic.last_result_as(TrainingRunResult)
    report.device = run.device
    report.outputs.update({"bundle": str(Path(args.output)), **result.files})
    report.metrics.update({k: getattr(run, k) for k in TRAINING_METRICS})
    report.metrics["labels"] = {str(k): v for k, v in result.labels.items()}
    return 0


def cmd_export(args, report) -> int:
    """``medai export``."""
    if not (args.fp16 or args.onnx):
        raise ValueError("Choose at least one export: --fp16 and/or --onnx.")
    require_inputs(args.bundle, *args.sample)
    if args.onnx:
        require_packages(["onnx", "onnxruntime"], "--onnx", "pip install 'medai[export]'")
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import get_scene
    from MedAISegLib.inference.export import export_compressed
    from MedAISegLib.learning.training import preprocess_for_bundle

    if args.trust_bundle:
        from MedAISegLib.inference.bundle_trust import record_trust

        record_trust(args.bundle)
    scene = get_scene()
    report.inputs.update({"bundle": str(args.bundle), "samples": [str(p) for p in args.sample]})
    with report.timed("load"):
        samples = [preprocess_for_bundle(bridge.volume_to_sitk(bridge.load_volume(scene, p)), args.bundle)
                   for p in args.sample]
    device = select_device(args.device)
    report.device = str(device)
    report.parameters.update({"fp16": args.fp16, "onnx": args.onnx, "repeat": args.repeat,
                              "trust_bundle": args.trust_bundle})
    with report.timed("export"):
        result = export_compressed(args.bundle, samples, fp16=args.fp16, onnx=args.onnx, device=device,
                                   repeat=args.repeat)
    for key, entry in result.items():
        if "file" in entry:
            report.outputs[key] = entry["file"]
    report.metrics.update(result)
    return 0
