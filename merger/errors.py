"""User-facing errors: one clear sentence, no traceback."""


class AlloyError(Exception):
    """An error whose message is a sentence for the user (it names the file and key where known)."""

    exit_code = 2


class Interrupted(AlloyError):
    """The user stopped the operation; nothing was changed (or the original was restored)."""


class TensorValueError(AlloyError):
    """NaN/inf (or values the output precision cannot hold) in a merged tensor. The engine raises
    it with the key and adds the input files (`with_inputs`) before it reaches the user."""

    def __init__(self, key: str, what: str, inputs: str = ""):
        self.key, self.what, self.inputs = key, what, inputs
        src = f" (merging {inputs})" if inputs else ""
        super().__init__(f"The merged tensor {key}{src} contains {what} (check the inputs and the weights); "
                         "nothing was written.")

    def __reduce__(self):            # worker processes send it back pickled
        return type(self), (self.key, self.what, self.inputs)

    def with_inputs(self, inputs: str) -> "TensorValueError":
        return type(self)(self.key, self.what, inputs)
