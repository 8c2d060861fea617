class ClipflowError(Exception):
    """A problem with the user's input or configuration, reported without a traceback."""
