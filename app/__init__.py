"""Loupe's Qt user interface (PySide6). Imports `detector`; never the reverse."""
