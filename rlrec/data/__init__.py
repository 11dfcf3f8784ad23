"""Event logs in: readers, validation, sessionization, time split, PreparedDataset, synthetic."""

from rlrec.data.dataset import PreparedDataset, SessionArrays, load_dataset

__all__ = ["PreparedDataset", "SessionArrays", "load_dataset"]
