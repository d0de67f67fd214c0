"""distill: turn an expensive LLM teacher into a small multi-task student."""

__version__ = "0.1.0"
