"""The package version, in one module that imports nothing (read by the root package and
written into export manifests)."""

__version__ = "0.1.0"
