"""``nnUNetv2_train ... -pretrained_weights FILE`` for every network of the family.

nnU-Net 2.8 loads pretrained weights with ``nnunetv2.run.load_pretrained_weights.load_pretrained_weights``:
it leaves out the tensors whose names contain ``.seg_layers.`` (nnU-Net's name for its output
layers) and asserts that every other tensor of the network is in the file with the same shape.
The family keeps its networks' official names, which official checkpoints need for a strict load
(SegMamba, SwinUNETR, UNETR: ``out.conv.conv.*``; Swin-UMamba: ``out_layers.*``), so nnU-Net's
function refuses them as soon as the new dataset has another number of classes. And where the
two datasets' plans differ (another pooling, patch or width), its assertion prints the whole
tensor of the network's first misshapen parameter.

nnU-Net gives no hook here: ``nnunetv2.run.run_training`` imports the function by name and calls
it in ``maybe_load_checkpoint``, right after ``trainer.initialize()``. So, with the stock
``nnUNetv2_train`` unchanged:

1. each member of the registry declares its output layers (:attr:`Member.output_layers
   <nnunetv2_segresmamba.registry.Member.output_layers>`: state-dict key prefixes, every
   deep-supervision head included);
2. our trainers' ``initialize`` marks the network they built with them, and with the run
   (trainer, dataset, plans, configuration, fold) for the advice of a refused load (:func:`mark`);
3. importing our trainers, which nnU-Net does in the ``nnUNetv2_train`` process when it looks the
   trainer up (before ``maybe_load_checkpoint``), puts :func:`load_pretrained_weights` in place
   of that name in ``nnunetv2.run.run_training`` (:func:`install`; with several GPUs, each
   process nnU-Net spawns looks the trainer up, and so installs it, before it loads). It loads a
   marked network itself, and hands any other network to nnU-Net's function unchanged: nnU-Net's
   own trainers, in the same process too, load as they always did.

A marked network gets every tensor of the file but its output layers, which keep their fresh
initialisation, as nnU-Net's ``seg_layers``; the load is refused, with nothing loaded, unless
every other tensor of the network is in the file with its shape and the file holds no tensor
the network lacks. The error names those tensors (shapes, a short list) and says what to do:
where the plans differ, train the new dataset with the checkpoint's plans
(``nnUNetv2_move_plans_between_datasets``, ``nnUNetv2_preprocess``, ``nnUNetv2_train -p``), the
commands written out for this run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch.nn as nn
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights as nnunet_load_pretrained_weights
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunetv2_segresmamba.registry import Member
from nnunetv2_segresmamba.tools.checkpoints import load_checkpoint_file

MARK = "fine_tuning_target"  # the attribute of a network that our trainers built
LISTED = 6  # the tensors an error lists of each kind, then a count


@dataclass(frozen=True)
class FineTuningTarget:
    """What a trainer marks its network with: its output layers (state-dict key prefixes), and
    the run, which an error uses to write out the commands (None where not known)."""

    output_layers: tuple[str, ...]
    trainer: str | None = None
    network: str | None = None  # the registry member's network name
    dataset: str | None = None  # nnU-Net's dataset name, e.g. "Dataset994_Other"
    configuration: str | None = None
    fold: str | None = None
    plan: dict | None = None  # the configuration as the network was built from it (resolved)
    num_input_channels: int | None = None


def mark(network: nn.Module, target: FineTuningTarget) -> None:
    """Marks ``network`` (unwrapped, see :func:`bare`) for :func:`load_pretrained_weights`."""
    setattr(bare(network), MARK, target)


def target_of(network: nn.Module) -> FineTuningTarget | None:
    """The mark of ``network`` (wrapped or not), or None for a network that no trainer of ours built."""
    return getattr(bare(network), MARK, None)


def bare(network: nn.Module) -> nn.Module:
    """``network`` out of DistributedDataParallel's and torch.compile's wrappers (as nnU-Net unwraps it)."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    return network._orig_mod if isinstance(network, OptimizedModule) else network


def run_target(trainer: Any, member: Member) -> FineTuningTarget:
    """The mark for the network of an initialised nnU-Net ``trainer`` that trains ``member``."""
    return FineTuningTarget(
        tuple(member.output_layers), type(trainer).__name__, member.network, trainer.plans_manager.dataset_name,
        trainer.configuration_name, str(trainer.fold),
        trainer.configuration_manager.configuration, trainer.num_input_channels)


def load_pretrained_weights(network: nn.Module, fname: str, verbose: bool = False) -> None:
    """nnU-Net's ``load_pretrained_weights(network, fname, verbose)``, for a network that a trainer
    of ours marked: every tensor of the checkpoint's ``network_weights`` but the network's output
    layers, after checking that they fit (ValueError naming what does not and what to do, nothing
    loaded). Any other network goes to nnU-Net's own function."""
    target = target_of(network)
    if target is None:
        return nnunet_load_pretrained_weights(network, fname, verbose)
    module = bare(network)
    checkpoint = load_checkpoint_file(fname, "cpu")
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ValueError(f"{fname} holds no 'network_weights': give -pretrained_weights a checkpoint that "
                         "nnUNetv2_train wrote (checkpoint_final.pth or checkpoint_best.pth of a fold)")
    pretrained, own = checkpoint["network_weights"], module.state_dict()
    output = [k for k in own if is_output(k, target.output_layers)]
    if not output:
        raise RuntimeError(f"{type(module).__name__} has no tensor under its declared output layers "
                           f"{list(target.output_layers)}: the registry's output_layers are out of date")
    transferred = {k: v for k, v in pretrained.items() if not is_output(k, target.output_layers)}
    needed = {k: v for k, v in own.items() if not is_output(k, target.output_layers)}
    misshapen = [(k, tuple(transferred[k].shape), tuple(v.shape)) for k, v in needed.items()
                 if k in transferred and transferred[k].shape != v.shape]
    missing = [k for k in needed if k not in transferred]
    unexpected = [k for k in transferred if k not in needed]
    if misshapen or missing or unexpected:
        raise ValueError(refusal(fname, checkpoint, target, misshapen, missing, unexpected))
    module.load_state_dict({**own, **transferred})
    print("################### Loading pretrained weights from file ", fname, "###################")
    print(f"{len(transferred)} tensors loaded; the output layers ({', '.join(p + '*' for p in target.output_layers)}: "
          f"{len(output)} tensors) keep their initialisation, as they depend on the classes")
    if verbose:
        for key, value in transferred.items():
            print(key, "shape", value.shape)
        print("################### Done ###################")


def is_output(key: str, output_layers: tuple[str, ...]) -> bool:
    return key.startswith(tuple(output_layers))


def install() -> None:
    """Makes ``nnUNetv2_train -pretrained_weights`` load through :func:`load_pretrained_weights`:
    puts it in place of the name that ``nnunetv2.run.run_training.maybe_load_checkpoint`` calls."""
    from nnunetv2.run import run_training

    run_training.load_pretrained_weights = load_pretrained_weights


def refusal(fname: str, checkpoint: dict, target: FineTuningTarget, misshapen: list[tuple[str, tuple, tuple]],
            missing: list[str], unexpected: list[str]) -> str:
    """The error of a refused load: the tensors that do not fit, then what to do."""
    layers = ", ".join(p + "*" for p in target.output_layers)
    lines = [f"{fname} does not fit this network beyond its output layers ({layers}, left out as they depend on "
             "the classes). Nothing was loaded."]
    lines += listing("Tensors of another shape (checkpoint vs. this network)",
                     [f"{k}: {tuple(a)} vs. {tuple(b)}" for k, a, b in misshapen])
    lines += listing("Tensors of this network missing from the checkpoint", missing)
    lines += listing("Tensors of the checkpoint this network does not have", unexpected)
    return "\n".join(lines + advice(fname, checkpoint, target))


def listing(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    more = [f"  ... and {len(items) - LISTED} more"] if len(items) > LISTED else []
    return [f"{title}, {len(items)}:"] + [f"  {item}" for item in items[:LISTED]] + more


def advice(fname: str, checkpoint: dict, target: FineTuningTarget) -> list[str]:
    """What to do: the causes the checkpoint's record shows (another network, other input channels,
    other plans), and where the plans differ or are not recorded, the commands that train this
    dataset with the checkpoint's plans."""
    source = checkpoint.get("init_args") or {}
    causes = []
    source_trainer = checkpoint.get("trainer_name")
    networks = (checkpoint.get("architecture") or {}).get("member"), target.network  # recorded by our trainers
    if all(networks) and networks[0] != networks[1]:
        causes.append(f"The checkpoint holds {networks[0]} ({source_trainer}); {target.trainer} builds "
                      f"{networks[1]}: fine-tune from a checkpoint of the same network.")
    channels = len(source["dataset_json"]["channel_names"]) if "dataset_json" in source else None
    if channels is not None and target.num_input_channels is not None and channels != target.num_input_channels:
        causes.append(f"The checkpoint was trained on {channels} input channel(s) (the channel_names of its "
                      f"dataset.json), this dataset has {target.num_input_channels}: the first layer takes the "
                      "channels, so both datasets need the same ones, in the same order.")
    differences = plan_differences(source, target.plan)
    if differences:
        causes.append("The plans differ: " + "; ".join(differences) + ".")
    if differences or (differences is None and not causes):
        causes.append("Where the plans differ (another pooling, patch size or width), train this dataset with the "
                      "checkpoint's plans, as nnU-Net documents (its pretraining_and_finetuning.md):")
        causes += [f"  {command}" for command in plans_transfer_commands(fname, source, target)]
    elif not causes:
        causes.append(f"The plans are the same: the checkpoint's trainer ({source_trainer}) built this network with "
                      f"other arguments than {target.trainer} (widths, ToM directions): fine-tune with a trainer "
                      "that builds the checkpoint's network.")
    return causes


def plan_differences(source: dict, plan: dict | None) -> list[str] | None:
    """What differs between the configuration the checkpoint was trained with (its ``init_args``)
    and ``plan`` (patch, spacing, the architecture's arguments); None where either is unknown."""
    if plan is None or "plans" not in source or "configuration" not in source:
        return None
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        trained = PlansManager(source["plans"]).get_configuration(source["configuration"]).configuration
    except (KeyError, ValueError, TypeError):
        return None
    pairs = [(k, trained.get(k), plan.get(k)) for k in ("patch_size", "spacing")]
    arch_a = (trained.get("architecture") or {}).get("arch_kwargs") or {}
    arch_b = (plan.get("architecture") or {}).get("arch_kwargs") or {}
    pairs += [(k, arch_a.get(k), arch_b.get(k)) for k in sorted({*arch_a, *arch_b})]
    return [f"{k} {as_list(a)} in the checkpoint's, {as_list(b)} here" for k, a, b in pairs if as_list(a) != as_list(b)]


def as_list(value: Any) -> Any:
    return [as_list(v) for v in value] if isinstance(value, (list, tuple)) else value


def dataset_id(name: str | None) -> str | None:
    """The id of nnU-Net's dataset ``name`` ("Dataset994_Other" -> "994"; nnUNetv2_preprocess
    takes ids only), the name where it has none, None for None."""
    found = re.match(r"Dataset(\d+)_", name or "")
    return str(int(found.group(1))) if found else name


def plans_transfer_commands(fname: str, source: dict, target: FineTuningTarget) -> list[str]:
    """nnU-Net's commands that give this dataset the checkpoint's plans, preprocess it with them and
    fine-tune; names from the checkpoint's ``init_args`` and the run, placeholders where unknown."""
    plans = source.get("plans") or {}
    source_dataset = dataset_id(plans.get("dataset_name")) or "SOURCE_DATASET"
    source_plans = plans.get("plans_name", "SOURCE_PLANS")
    moved = f"{source_plans}_from{dataset_id(plans.get('dataset_name')) or 'SOURCE'}"
    dataset = dataset_id(target.dataset) or "TARGET_DATASET"
    configuration = source.get("configuration") or target.configuration or "CONFIGURATION"
    return [
        f"nnUNetv2_move_plans_between_datasets -s {source_dataset} -t {dataset} -sp {source_plans} -tp {moved}",
        f"nnUNetv2_preprocess -d {dataset} -plans_name {moved} -c {configuration}",
        f"nnUNetv2_train {dataset} {configuration} {target.fold or 'FOLD'} -tr {target.trainer or 'TRAINER'} "
        f"-p {moved} -pretrained_weights {os.path.abspath(fname)}",
    ]
