"""nenya: train every model family on scientific images from one JSON opts file."""

from setuptools import find_packages, setup

setup(
    name="nenya",
    version="0.1.0",
    description="One plain-PyTorch codebase that trains SSL, MAE, segmentation and classification models "
                "on scientific images, driven by JSON options files.",
    long_description=open("README.rst").read(),
    long_description_content_type="text/x-rst",
    packages=find_packages(include=["nenya", "nenya.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "numpy",
        "h5py",
        "scikit-learn",
        "matplotlib",
        "tqdm",
        "tensorboard",
        "scipy",
        "scikit-image",  # the built-in textures and segmentation data
        "monai",  # segmentation losses, metrics and sliding-window inference (torch and numpy only)
        "kornia",  # batched augmentation on the device (SimCLR RGB views, classification presets)
        "torchmetrics",  # classification metrics
        "pillow",  # image folders (PNG, JPEG, TIFF)
    ],
    extras_require={
        "mlflow": ["mlflow"],
        "dev": ["pytest", "pytest-cov", "sphinx", "mlflow"],
        "docs": ["sphinx"],
    },
)
