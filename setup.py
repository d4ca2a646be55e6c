"""Install: ``pip install .`` (add ``[cuda]`` on a CUDA machine with nvcc for the Mamba kernels).

Besides the package, the wheel carries ``nnunetv2_segresmamba.pth`` at the root of
site-packages so that nnU-Net finds our trainers in any new shell (see
``nnunetv2_segresmamba/discovery``). Regular and editable installs both get it.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools < 64 has no PEP 660 editable wheels
    editable_wheel = None

HERE = os.path.dirname(os.path.abspath(__file__))
PTH = "nnunetv2_segresmamba.pth"


class BuildPyWithPth(build_py):
    """Puts the discovery .pth next to the package in the wheel."""

    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=1):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]


cmdclass = {"build_py": BuildPyWithPth}

if editable_wheel is not None:

    class EditableWheelWithPth(editable_wheel):
        """Editable wheels hold only setuptools' own finder; add the discovery .pth to them."""

        def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
            result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
            self.copy_file(os.path.join(HERE, PTH), os.path.join(unpacked_wheel, PTH))
            return result

    cmdclass["editable_wheel"] = EditableWheelWithPth


def read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


setup(
    name="nnunetv2-segresmamba",
    version="0.1.0",
    description="SegResMamba and its baselines (SegMamba, SwinUNETR, UNETR, nnU-Net) as nnU-Net v2 trainers",
    long_description=read("README.md"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunetv2_segresmamba", "nnunetv2_segresmamba.*"]),
    package_data={"nnunetv2_segresmamba.discovery": ["nnunet_ext/*.py"]},
    install_requires=[
        "nnunetv2>=2.8,<2.9",
        "dynamic-network-architectures>=0.4.4,<0.5",  # nnU-Net 2.8's; U-Mamba's residual blocks come from it
        "torch>=2.6",  # nnunetv2_segresmamba.TORCH_FLOOR: safe_globals with (class, name) entries (VMamba's weights)
        "monai>=1.5",
        "SimpleITK>=2.2",
        "batchgenerators>=0.25",
        "numpy",
        "numba>=0.59",  # the fused CPU ToM; wheels for Linux, macOS and Windows
        "scipy>=1.9",  # the report's Wilcoxon test and ranks (evaluation.stats)
    ],
    extras_require={
        "cuda": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        "energy": ["codecarbon>=2.5"],
        "cluster": ["submitit>=1.5"],
        "benchmark": ["mambapy>=1.2", "matplotlib", "tqdm"],
        "test": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.5", "codecarbon>=2.5", "submitit>=1.5", "mambapy>=1.2", "matplotlib", "tqdm"],
    },
    entry_points={"console_scripts": ["nnunetv2_segresmamba=nnunetv2_segresmamba.cli:main"]},
    cmdclass=cmdclass,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
