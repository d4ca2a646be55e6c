"""Recipes and run lengths, as mixins listed before a trainer's base: ``class X(NnUNetRecipe,
ComparisonTrainerBase)``. A recipe sets the optimizer, learning rate, weight decay, schedule and
loss; a run length the epochs and iterations (the family's full budget is
:class:`~.base.ComparisonTrainerBase`'s)."""

from __future__ import annotations


class NnUNetRecipe:
    """Mixin: nnU-Net's recipe, SGD lr 1e-2 (nesterov, momentum 0.99, weight decay 3e-5), poly
    schedule, Dice + cross-entropy. Deep supervision is the network's choice, not set here."""

    optimizer_name = "SGD"
    recipe_initial_lr = 1e-2
    recipe_weight_decay = 3e-5
    lr_schedule = "poly"
    loss_name = "dice_ce"


class PaperRecipe:
    """Mixin: the SegResMamba paper's recipe (appendix A), AdamW lr 1e-4 (weight decay 1e-5),
    cosine annealing, soft Dice, no deep supervision."""

    optimizer_name = "AdamW"
    recipe_initial_lr = 1e-4
    recipe_weight_decay = 1e-5
    lr_schedule = "cosine"
    loss_name = "dice"
    deep_supervision = False


class TwoEpochs:
    """Mixin: two epochs of the full iteration count, a quick check on a real dataset."""

    comparison_num_epochs = 2


class SmokeSchedule:
    """Mixin: a pipeline check in a few CPU minutes: 2 epochs x 4 iterations, 1 validation
    iteration, a checkpoint every epoch, seeded. Trains, validates, saves and predicts; learns little."""

    comparison_num_epochs = 2
    comparison_iterations_per_epoch = 4
    comparison_val_iterations_per_epoch = 1
    comparison_save_every = 1
    seed = 0


class QuickSmokeSchedule(SmokeSchedule):
    """Mixin: the cheapest run that still trains, validates, saves and predicts through the CLI:
    1 epoch x 2 iterations, without mirroring (as nnU-Net's ``nnUNetTrainerNoMirroring``: one
    forward pass a window at validation and prediction instead of 8). For the networks whose
    learning other smoke runs cover (the ablations), and for those whose patches of 32^3 and up
    make each CPU step slow (SegMamba, SwinUNETR, UNETR)."""

    comparison_num_epochs = 1
    comparison_iterations_per_epoch = 2

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None
