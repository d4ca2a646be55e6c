"""The SegResMamba paper's efficiency figures (MIDL 2025), A100 40 GB, BTCV 1 -> 14 at 128^3.

Keyed by :attr:`nnunetv2_segresmamba.registry.Member.network`; a missing key means the paper
gives no figure for that network.
"""

from __future__ import annotations

# Table 7: parameters (millions) and fvcore "FLOPs", which count multiply-accumulates (G)
PARAMS_M = {"SegResMamba": 119.98, "SegMamba": 67.36, "SwinUNETR": 62.19, "UNETR": 93.01, "nnU-Net": 31.19}
FVCORE_MACS_G = {"SegResMamba": 188.42, "SegMamba": 1443.96, "SwinUNETR": 767.23, "UNETR": 177.44,
                 "nnU-Net": 480.06}

# Table 8: training memory (GB) at batch 1, BTCV 128^3
TRAIN_MEMORY_GB = {"SegResMamba": 5.10, "SegMamba": 13.51, "SwinUNETR": 7.77, "UNETR": 3.08}

# Table 1: inference time per patch (s) and the MACs given beside it (G)
INFERENCE_S = {"SegResMamba": 0.0841, "SegMamba": 0.1693, "SwinUNETR": 0.1343, "UNETR": 0.0531, "nnU-Net": 0.1668}
TABLE1_MACS_G = {"SegResMamba": 336.45, "SegMamba": 1554.86, "SwinUNETR": 784.46, "UNETR": 196.03,
                 "nnU-Net": 1067.97}

# Table 6 (BraTS, 5 folds): epoch time (s); the paper's CO2 figures are estimates, not measured
EPOCH_TIME_S = {"SegResMamba": 267.83, "SegMamba": 321.50, "SwinUNETR": 321.39, "UNETR": 262.83}
