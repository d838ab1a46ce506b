"""The one error type model loading raises, so callers can tell a bad model folder from a bug."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model folder is missing, unreadable, or describes something this server cannot run.

    It subclasses ValueError so that configuration code validating user input can catch bad model
    paths and bad option values with a single ``except ValueError``. Messages always name the folder
    or file, because the operator who reads them usually serves several models.
    """
