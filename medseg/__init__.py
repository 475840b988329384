"""medseg: medical image segmentation with UNet++, H-DenseUNet, Swin UNETR and Att-SwinU-Net.

The package root stays light so that ``medseg --help`` answers fast: torch, MONAI and
MLflow are imported by the sub-packages that need them, never here.
"""

from medseg.errors import CaseError, ConfigError, MedsegError

__version__ = "0.1.0"

__all__ = ["CaseError", "ConfigError", "MedsegError", "__version__"]
