"""The errors a user can fix, in one light module (no torch): the stages catch these and print
one line, and a stage that needs no model (pair) starts in a second instead of ~12 s."""


class DataError(ValueError):
    """A concept image or prompt file cannot be used; the message names the file."""


class BackboneError(RuntimeError):
    """The requested backbone cannot be loaded (missing weights, offline, wrong kind)."""


class ScorerError(RuntimeError):
    """A scoring model cannot be loaded, or a score is not finite; the message says what to do."""


class PairingError(ValueError):
    """No pair survived: the message has the counts per step and the param to loosen."""


class LoraError(ValueError):
    """A LoRA file that must not be used (non-finite values)."""


class TrainingDiverged(RuntimeError):
    """A loss or gradient became inf/NaN: stop before any weight is written."""


class StaleInputError(RuntimeError):
    """An input was made from upstream artifacts that changed since: rerun the stage named."""
