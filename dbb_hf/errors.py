"""The error of a dataset or data folder that does not have the layout a stage expects.

It has a module of its own, below everything else, so that the data loaders
(``dbb_hf.data``) and the checks that run before each stage (``dbb_hf.checks``) both
raise it without importing each other.
"""


class DatasetFormatError(ValueError):
    """A data folder or dataset does not have the layout a loader or stage expects."""
