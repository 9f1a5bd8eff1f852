"""Single source of the package version (read by pyproject.toml through setuptools)."""

__version__ = "0.1.0"
