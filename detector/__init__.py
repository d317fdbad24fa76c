"""Loupe's engine: project store, COCO, model, inference, training, evaluation. No Qt here."""

__version__ = "0.1.0"
