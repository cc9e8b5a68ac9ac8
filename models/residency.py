"""One resident instance per model key per process, and one model load at a time.

Loads are serialised process-wide, not per model kind: while diffusers/accelerate load a pipeline
they patch ``torch.nn.Module`` globally to create parameters on the ``meta`` device, so a Demucs
model built in another thread at the same moment would come out empty.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

_resident: dict[Hashable, Any] = {}
_load_lock = threading.Lock()


def resident(key: Hashable, load: Callable[[], T]) -> T:
    """The process's instance for ``key``; ``load()`` runs on first use only, under the load lock."""
    with _load_lock:  # held across the load, so concurrent first callers wait instead of loading twice
        instance = _resident.get(key)
        if instance is None:
            instance = load()
            _resident[key] = instance
        return instance


def forget(predicate: Callable[[Hashable], bool]) -> None:
    """Drop the resident instances whose key matches (their memory goes once no caller holds them)."""
    with _load_lock:
        for key in [key for key in _resident if predicate(key)]:
            del _resident[key]
