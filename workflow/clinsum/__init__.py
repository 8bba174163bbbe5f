"""clinsum: distil an instruction-tuned teacher into a small student for clinical case report summarization."""

__version__ = "0.1.0"
