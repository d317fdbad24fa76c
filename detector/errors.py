"""The one base class of every mistake or fault Loupe explains to the user in one line."""


class LoupeError(Exception):
    """A problem the user can act on; the message names the file and the problem."""


class TrainingError(LoupeError):
    """Training stopped; the message says why and what to do. The previous model is kept."""


class InferenceError(LoupeError):
    """Inference cannot run; the message says what to do."""
