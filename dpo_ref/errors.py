"""The one exception type a user can cause; the CLI turns it into one line and exit code 2."""


class UserError(Exception):
    """Bad input (YAML, file, key, value). `where` names the file and key, `message` what is wrong and allowed."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
