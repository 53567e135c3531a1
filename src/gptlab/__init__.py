"""gptlab: a reproducible pipeline that trains a compact GPT-2-style model and measures it against GPT-2."""

__version__ = "0.1.0"
