"""The package's error tree: one base class, and a subclass for each failure a caller can act on."""


class DermbatchError(Exception):
    """Base class of every error dermbatch raises on purpose."""


class ConfigurationError(DermbatchError):
    """A setting is missing or invalid."""


class InvalidImageError(DermbatchError):
    """An image cannot be classified; `reason` is a short code stored with the image row."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ImageReadError(DermbatchError):
    """An image could not be read from its source; `transient` is True when a retry may succeed."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class ModelNotFoundError(DermbatchError):
    """No model bundle exists at a path, or no model version has the requested name."""


class ModelContractError(DermbatchError):
    """A model bundle is inconsistent: checksum mismatch, wrong output size, invalid metadata."""


class SourceNotFoundError(DermbatchError):
    """A folder, bucket or prefix to classify does not exist or contains no images."""


class SourceAccessError(DermbatchError):
    """A source exists but cannot be read: wrong credentials, permission denied."""


class JobNotFoundError(DermbatchError):
    """No job has the requested id."""
