"""The one exception type for problems a user can fix (bad input, bad config, bad data)."""


class UserError(Exception):
    """A problem with the user's input. The message names the input and says how to fix it.

    Command-line entry points catch it, log the message without a traceback and exit with
    `common.exit_codes.USER_ERROR`.
    """

    def __init__(self, message: str | list[str]):
        if isinstance(message, list):
            message = "\n".join(f"  - {m}" for m in message)
            message = f"{len(message.splitlines())} problem(s):\n{message}"
        super().__init__(message)
