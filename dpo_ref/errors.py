"""The one exception type a user can cause; the CLI turns it into one line and exit code 2."""

import re

EXCERPT = 80  # characters of a user's input an error message may echo
MAX_WHERE, MAX_MESSAGE = 300, 600  # one readable line, whatever a library put into a message


def excerpt(value: object, limit: int = EXCERPT) -> str:
    """`repr(value)` cut to `limit` characters: a message names the bad input without echoing a 10 MB value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def one_line(text: str, limit: int) -> str:
    """`text` on one line (line breaks and runs of spaces collapsed) of at most `limit` characters."""
    flat = re.sub(r"\s*\n\s*", " ", str(text).strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class UserError(Exception):
    """Bad input (YAML, file, key, value). `where` names the file and key, `message` what is wrong and allowed."""

    def __init__(self, where: str, message: str):
        where, message = one_line(where, MAX_WHERE), one_line(message, MAX_MESSAGE)
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
