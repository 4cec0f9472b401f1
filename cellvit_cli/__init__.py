"""cellvit-cli: instance segmentation of cells and nuclei with a ViT and three dense heads."""

__version__ = "0.1.0"
