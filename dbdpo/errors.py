"""The errors a user can fix, in one light module (no torch). Each is a UserError: the stage
layer catches that one class and prints one line, and a stage that needs no model (pair)
starts in a second instead of ~12 s."""


class UserError(Exception):
    """Bad input the user can fix; the message names the key, file or value and the fix."""


class ConfigError(UserError, ValueError):
    """A params.yaml value is missing, unknown or out of range."""


class DataError(UserError, ValueError):
    """A concept image or prompt file cannot be used; the message names the file."""


class BackboneError(UserError, RuntimeError):
    """The requested backbone cannot be loaded (missing weights, offline, wrong kind)."""


class ScorerError(UserError, RuntimeError):
    """A scoring model cannot be loaded, or a score is not finite; the message says what to do."""


class PairingError(UserError, ValueError):
    """No pair survived: the message has the counts per step and the param to loosen."""


class LoraError(UserError, ValueError):
    """A LoRA file that must not be used (non-finite values)."""


class TrainingDiverged(UserError, RuntimeError):
    """A loss or gradient became inf/NaN: stop before any weight is written."""


class CheckpointError(UserError, RuntimeError):
    """A training checkpoint that cannot be read: delete it to start the stage over."""


class MissingInput(UserError, FileNotFoundError):
    """An artifact a stage reads is absent: the stage that writes it has not run."""


class StaleInputError(UserError, RuntimeError):
    """An input was made from upstream artifacts that changed since, or by another version:
    rerun the stage that writes it."""
