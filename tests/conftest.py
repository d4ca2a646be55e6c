"""Where no GPU is present, Triton kernels run in Triton's CPU interpreter. The variable must
be set before Triton compiles anything, hence here."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
