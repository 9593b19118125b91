"""lmft: Learnable Motion-Focused Tokenization for video domain adaptation on Ray."""

__version__ = "0.1.0"
