"""Optimizers the trainers can choose besides torch's: GaLore-AdamW (``optimizers.galore``)."""
