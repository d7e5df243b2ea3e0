"""Data: synthetic length distributions, length files, corpora and per-rank loading."""
