"""The package version, where any module can import it (the ``celeriac`` facade re-exports it;
modules inside the package may not import the facade)."""

__version__ = "0.1.0"
VERSION = (0, 1, 0)
