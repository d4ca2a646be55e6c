"""Fold sweeps: datasets x configurations x trainers x folds with the stock ``nnUNetv2_train``,
here or on SLURM, with status, resume and a report across folds."""
