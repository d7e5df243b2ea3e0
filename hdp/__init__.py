"""hdp: Hybrid Data Parallelism for training on long-tailed sequence lengths."""

__version__ = "0.1.0"
