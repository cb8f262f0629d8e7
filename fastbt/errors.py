"""Exception types whose message is meant for the user as-is (the CLI prints it in one line)."""


class ConfigError(ValueError):
    """A bad config file, key or value; the message names it."""


class RunStopped(RuntimeError):
    """A run stopped itself for a reason the message gives (e.g. a non-finite loss)."""


class RunDirError(RuntimeError):
    """A run directory cannot be used as asked: another run holds it, it holds a run of another
    config or only unreadable checkpoints, or its disk is full; the message says what to do."""


class DeviceError(RuntimeError):
    """GPUs are present but torch cannot use them (e.g. a driver older than torch's CUDA build)."""
