"""The one exception a user sees for a bad training or evaluation setup."""


class TrainConfigError(Exception):
    """A configuration that cannot train or evaluate; the message says what to change.

    Raised before the first training step (or when the loss diverges), turned by the CLI into a
    one-line error, exit code 2.
    """
