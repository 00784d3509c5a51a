"""memgen: regenerate the figures of the research on memorization and generalization.

The library is plain Python (torch, numpy, scipy, h5py, pandas, matplotlib) and knows
nothing about Snakemake; ``python -m memgen STEP`` wraps each step for the workflow.
"""

__version__ = "0.1.0"


class MemgenError(Exception):
    """An error a user can act on: bad config, bad input file, missing data set."""
