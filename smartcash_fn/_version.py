"""The library's version, in one place: ``from smartcash_fn._version import __version__``."""

__version__ = "0.1.0"
