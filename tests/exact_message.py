"""pytest.raises(..., match=exactly(message)): the whole message, not a key phrase in it."""

import re


def exactly(message: str) -> str:
    """A regular expression that matches ``message`` and nothing longer or shorter."""
    return "^" + re.escape(message) + "$"
