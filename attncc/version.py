"""The version of attncc: part of every generated header and spec hash."""
__version__ = "0.1.0"
