"""SegResMamba and its baselines as nnU-Net v2 trainers.

Kept import-light on purpose: a ``.pth`` hook imports ``nnunetv2_segresmamba.discovery``
at every interpreter start, so nothing here may import torch or nnU-Net.
"""

__version__ = "0.1.0"
