"""imagekit: golden machine images for GPU inference services."""

__version__ = "0.1.0"
