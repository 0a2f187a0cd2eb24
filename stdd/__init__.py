"""stdd — the STDPipe daemon."""
__version__ = "0.1.0"
