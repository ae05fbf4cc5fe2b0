"""Errors a user can act on. Each message says what is wrong and what to do about it."""

from __future__ import annotations


class SamEd2Error(Exception):
    """Base of every error this package raises on purpose."""


class UnknownModelError(SamEd2Error, ValueError):
    """A model name that is not in the registry."""


class CheckpointError(SamEd2Error):
    """A checkpoint file that is missing, unreadable or not a state dict."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose keys or shapes do not fit the chosen architecture."""


class ModelSettingsError(SamEd2Error, ValueError):
    """A load_model setting that cannot be used: a device, dtype or image size."""


class WeightsUnavailableError(SamEd2Error):
    """Weights that cannot be fetched (offline, no cache, or not downloadable at all)."""


class PromptError(SamEd2Error, ValueError):
    """A prompt that cannot be used: empty, outside the image, wrong shape."""


class SessionError(SamEd2Error, ValueError):
    """A Session call that cannot be done as asked: an unknown direction, limits that are not
    (first, last) frames, a negative library_k."""


class FrameError(SamEd2Error, IndexError):
    """A frame (slice) index that is not a whole number or lies outside the volume."""


class ObjectError(SamEd2Error, KeyError, ValueError):
    """An object id that is not a positive integer, is not in the session, or is taken.

    A KeyError for a missing object and a ValueError for a malformed one, as before."""

    __str__ = Exception.__str__  # the message, not KeyError's repr of it


class SavedStateError(SamEd2Error, ValueError):
    """A saved session or memory library that cannot be loaded: a file missing, truncated or
    edited, the two files not from the same save, or saved for another model."""


class SessionMismatchError(SavedStateError):
    """A saved session made for another image (its shape or content differ) or with another
    model or model settings: it resumes only on the image and with the model it was saved for."""


class VolumeError(SamEd2Error, ValueError):
    """An array that cannot be segmented as given (dimensions, axis, intensities)."""


class LabelError(SamEd2Error, ValueError):
    """A label volume that cannot be scored or trained on: wrong shape, empty, not integer labels."""


class ImageFileError(SamEd2Error, OSError):
    """An image or label file that cannot be read or written: truncated, wrong format, too many axes."""


class ExistingFileError(ImageFileError, FileExistsError):
    """A write that would replace a file the caller did not ask to overwrite."""


class TrainingError(SamEd2Error, ValueError):
    """Training input or settings that cannot be used: mismatched image and label shapes, a
    label without any object, an unknown module name to train, a bad resume state."""


class OutputFolderError(SamEd2Error, OSError):
    """An output folder that cannot be created or written (checked before any work starts)."""


class HistoryError(SamEd2Error, RuntimeError):
    """An undo or redo that cannot run now: a propagation or a GUI job is still in progress."""


class CohortError(SamEd2Error, ValueError):
    """A cohort that cannot be run as given: a CSV without an image column, two volumes of one
    name, a folder without images, settings the cohort tools refuse (checked before any work)."""


class PromptFileError(SamEd2Error, ValueError):
    """A prompt file that cannot be used: not JSON, neither the session format nor the
    simple prompts format, or prompts that do not fit the volume they are for."""
