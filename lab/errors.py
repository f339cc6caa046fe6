"""The lab's error, in a module of its own so that lab.lab and lab.faults can both raise it."""


class LabError(RuntimeError):
    """The lab could not be brought up or used; the message says why and what to do."""
