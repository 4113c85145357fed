"""The version of scalesocket, in a module of its own so that any module can name it without importing the app."""

__version__ = "0.2.0"
