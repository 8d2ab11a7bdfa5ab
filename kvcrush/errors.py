"""Errors with messages meant for people: every bad input raises one of these, never a bare traceback."""


class KVCrushError(ValueError):
    """Base class: the message says what was wrong and what to do instead."""


class BudgetError(KVCrushError):
    """A budget, crush fraction, block size or window that cannot be honoured."""


class PolicyError(KVCrushError):
    """An unknown policy, base policy, anchor mode or option."""


class PromptError(KVCrushError):
    """An empty prompt, or one longer than the model's context window or the memory allows."""


class ModelError(KVCrushError):
    """An unknown model id or path, missing safetensors weights, remote code, unsupported architecture."""


class DataUnavailableError(KVCrushError):
    """A packaged dataset that is not installed."""


class ResourceError(KVCrushError):
    """A run ran out of memory on a device, or the device failed (a CUDA error): what happened, with numbers."""


class RunCancelled(KVCrushError):
    """The caller's `should_stop` asked to abandon the run."""
