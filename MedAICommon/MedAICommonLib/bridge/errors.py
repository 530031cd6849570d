"""Errors raised by the MRML bridge."""


class BridgeError(ValueError):
    """Bad input to the bridge: the message names what is wrong and what to do."""
