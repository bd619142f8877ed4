"""regopt: regularization and optimization for deep networks."""
__version__ = "0.1.0"
