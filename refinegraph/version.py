"""The package version, apart from refinegraph/__init__ so that any module can read it
without importing the public API (which imports the runner)."""

__version__ = "0.1.0"
