"""consentauthz: policy-as-code consent authorization over gRPC."""

from importlib.metadata import PackageNotFoundError, version

try:
    #: The one place the version is written is pyproject.toml; this reads it back.
    __version__ = version("consentauthz")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
