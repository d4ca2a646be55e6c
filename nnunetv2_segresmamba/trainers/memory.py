"""Training in less memory, as mixins put first among a trainer's bases: :class:`LowMemory`
(activation checkpointing, the ``_lowmem`` trainers) and :class:`GaLore` (GaLore-AdamW, the
``_GaLore`` trainers). Each refuses, where the class is defined, a trainer it would not change."""

from __future__ import annotations

from typing import Any

from nnunetv2_segresmamba.registry import checkpointing_members, takes_checkpointing


class LowMemory:
    """Mixin: the same network with activation checkpointing (its ``checkpointing`` argument, or
    MONAI's ``use_checkpoint``): the network's segments (encoder stages or their convolutions,
    decoder blocks, and in SegResMamba's and SegMamba's ToMs each direction) keep only their
    inputs for the backward pass and run again there. Less training memory for one more forward
    pass a step and a little more (measured: documentation/memory_modes.md);
    the same weights and parameter names, and the gradients to fp32 rounding, so a ``_lowmem``
    run predicts like any other (its checkpoint loads into the plain network too). Only for
    trainers whose ``build_network`` takes it (:func:`~nnunetv2_segresmamba.registry.takes_checkpointing`):
    another trainer is refused where it is defined, as it would train without checkpointing."""

    activation_checkpointing = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not takes_checkpointing(cls.build_network):
            supported = ", ".join(dict.fromkeys(m.trainer for m in checkpointing_members()))
            raise TypeError(f"{cls.__name__}: LowMemory checkpoints a network's activations, but this trainer's "
                            "build_network builds its network without checkpointing, so it would train exactly as "
                            f"without LowMemory. LowMemory works with these trainers and their variants: {supported} "
                            "(e.g. nnUNetTrainerSegResMamba_lowmem); train this one without it.")


class GaLore:
    """Mixin: the recipe's AdamW as GaLore-AdamW (:mod:`nnunetv2_segresmamba.optimizers.galore`):
    the gradients of Linear and conv weights projected to ``galore_rank`` dimensions, Adam's moments
    kept there; the other parameters take unprojected steps. A smaller optimizer state; the same
    network and checkpoints, which predict without any GaLore import. Only for trainers whose
    recipe trains with AdamW: a trainer with another optimizer is refused where it is defined."""

    optimizer_name = "GaLoreAdamW"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        recipe = next((vars(c)["optimizer_name"] for c in cls.__mro__
                       if not issubclass(c, GaLore) and "optimizer_name" in vars(c)), None)
        if recipe != "AdamW":
            trains = "names no optimizer_name" if recipe is None else f"trains with {recipe}"
            raise TypeError(f"{cls.__name__}: GaLore replaces a recipe's AdamW, but this trainer's recipe {trains}; "
                            "put GaLore in front of a trainer whose optimizer_name is 'AdamW'")
        if cls.optimizer_name != GaLore.optimizer_name:
            raise TypeError(f"{cls.__name__} would train with {cls.optimizer_name}: put GaLore first among its bases, "
                            "e.g. class X(GaLore, nnUNetTrainerSegResMamba)")
