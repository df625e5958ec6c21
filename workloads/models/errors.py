"""The two ways a network brought from outside is refused, each with a one-line message.

Below every other module of ``workloads.models``: the loaders (``checkpoint``, ``adapters.hf_loading``) and the
adapters raise these, and the orchestrator catches them, without importing each other.
"""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line and names the file."""


class AdapterError(ValueError):
    """A model an adapter cannot reproduce: refused with a one-line reason, never lesioned."""
