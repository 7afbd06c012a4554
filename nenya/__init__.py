"""nenya: one plain-PyTorch codebase that trains every model family on scientific images."""

__version__ = "0.1.0"
