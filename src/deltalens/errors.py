"""User-facing errors.

Every error a researcher can cause with bad input (a wrong layer, a malformed JSONL
line, a vector of the wrong width, a missing key) is raised as a subclass of
:class:`DeltalensError`. Its message is complete on its own: it names the file, line
or value at fault and, where possible, what would be valid. The CLI prints these
as one line without a traceback; library users can catch them by class.
"""

from __future__ import annotations


class DeltalensError(Exception):
    """Base class for errors caused by input (as opposed to bugs)."""


class ModelSpecError(DeltalensError):
    """A model spec that names nothing loadable."""


class SiteError(DeltalensError):
    """A site (layer, component) that the model does not have."""


class PositionSpecError(DeltalensError):
    """A position spec that does not parse or cannot be resolved."""


class DataFormatError(DeltalensError):
    """A dataset file with a malformed record (file and line are in the message)."""


class ShapeError(DeltalensError):
    """A tensor whose shape does not fit (e.g. a vector of the wrong width)."""


class StoreMismatchError(DeltalensError):
    """An artifact that belongs to a different model, site or configuration."""


class ConfigError(DeltalensError):
    """A missing or invalid configuration value (e.g. an API key not in the environment)."""


class ModelMismatchError(DeltalensError):
    """Two models that cannot be compared (different architecture, width or depth)."""


class StoreBusyError(DeltalensError):
    """An artifact that another process is writing right now (stores are single-writer)."""


class WorkUnitError(DeltalensError):
    """Work units of a sweep that failed after their retries (the others' results are kept)."""
