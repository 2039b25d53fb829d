"""SFD: Score Forgetting Distillation toolkit (erase concepts from diffusion models, check they are gone)."""

__version__ = "0.1.0"
