"""SegResMamba and its baselines as nnU-Net v2 trainers.

Kept import-light on purpose: a ``.pth`` hook imports ``nnunetv2_segresmamba.discovery``
at every interpreter start, so nothing here may import torch or nnU-Net.
"""

__version__ = "0.1.0"

# The oldest torch the package runs on, and the API that needs it: networks.vmamba_weights reads VMamba's
# checkpoint with torch.serialization.safe_globals([(class, "module.name")]), whose (class, name)
# entries came in torch 2.6 (safe_globals itself in 2.5). setup.py's install_requires says the same
# (tests/test_cli.py checks it). nnU-Net 2.8 itself asks for torch>=2.1.2, !=2.9.*.
TORCH_FLOOR = "2.6"
