"""Exceptions and warnings raised by optimum-blockprune.

Every error derives from :class:`BlockPruneError` and also from the builtin a caller would expect
(``ValueError``, ``KeyError``, ``FileExistsError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class BlockPruneError(Exception):
    """Base class of every error raised by optimum-blockprune."""


class ConfigurationError(BlockPruneError, ValueError):
    """A configuration value is invalid on its own or for the model it is applied to."""


class UnsupportedArchitectureError(BlockPruneError, ValueError):
    """The model's ``model_type`` has no registered architecture adapter."""


class CalibrationDataError(BlockPruneError, ValueError):
    """The calibration data cannot be loaded or tokenised as requested."""


class SurgeryError(BlockPruneError, RuntimeError):
    """Removing blocks would leave the model in an inconsistent state."""


class OutputExistsError(BlockPruneError, FileExistsError):
    """The output directory is not empty and ``overwrite=True`` was not given."""


class OutputPathError(BlockPruneError, OSError):
    """An output location cannot be written (missing or read-only directory, a file in the way)."""


class FisherFileError(BlockPruneError, ValueError):
    """A Fisher estimate cannot be read, is corrupted, or was made on another model."""


class CheckpointError(BlockPruneError, ValueError):
    """A resumable-estimation checkpoint cannot be read or belongs to another run (other data, model or Fisher)."""


class ModelLoadError(BlockPruneError, OSError):
    """The model (or its configuration) cannot be found or loaded from the given id or directory."""


class HubUploadError(BlockPruneError, OSError):
    """An upload to the Hugging Face Hub failed; the local files are kept."""


class NonFiniteError(BlockPruneError, FloatingPointError):
    """A loss, statistic or estimate came out NaN or infinite (a broken weight, or overflow in a low precision)."""


class BlockPruneWarning(UserWarning):
    """Warnings about choices that work but deserve the user's attention."""
