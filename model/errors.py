"""One error type for bad user input, formatted as one line: expected / found / what to do."""


class DynamiCrafterInputError(ValueError):
    """Bad input from a user (file, widget value, tensor): the message is one line and says what to do."""

    def __init__(self, what: str, expected: str, found: str, todo: str):
        self.what, self.expected, self.found, self.todo = what, expected, found, todo
        super().__init__(f"{what}: expected {expected}, found {found}; {todo}")

    @classmethod
    def from_line(cls, line: str) -> "DynamiCrafterInputError":
        """The error of a one-line message already written as ``what: expected ..., found ...; todo`` (a node's
        VALIDATE_INPUTS verdict, raised when the node executes)."""
        what, _, rest = line.partition(": ")
        err = cls.__new__(cls)
        ValueError.__init__(err, line)
        err.what, err.expected, err.found, err.todo = what, rest, "", ""
        return err
