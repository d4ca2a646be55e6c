"""Compiles the numba kernels that the test suite's training and prediction processes run into
the per-user cache (``operators.numba_cache``): a training step and an inference pass of
SegResMamba (the ToM's kernels) and U-Mamba Bot (the one-direction scan's). Started in the
background by ``tests/conftest.py`` while the first modules plan their datasets; without it,
on a fresh checkout, the first training process of each pytest-xdist worker compiles them."""

import torch

from nnunetv2_segresmamba import registry

NETWORKS = {"SegResMamba": [16, 32, 32], "U-Mamba Bot": [16, 32, 32]}


def main() -> None:
    for name, patch in NETWORKS.items():
        network = registry.network(name).build(2, 3, patch)
        output = network(torch.randn(2, 2, *patch))
        (output[0] if isinstance(output, (list, tuple)) else output).mean().backward()
        with torch.inference_mode():
            network.eval()(torch.randn(1, 2, *patch))


if __name__ == "__main__":
    main()
