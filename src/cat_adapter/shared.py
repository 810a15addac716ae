"""Objects loaded once per process and reused: base models and embedders, for a harness that runs many jobs.

Outside ``shared_objects()`` nothing is kept (every ``load_model`` reads the weights). Inside it, the first
request for a key loads the object and keeps it pristine; a mutable object (a model that training adds LoRA
layers or tokens to, or fine-tunes) is handed out as a deep copy of the pristine one, so no job can leak
trained weights, tokens or adapters into the next; a read-only object (an embedder) is handed out as is.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator

_STORE: dict[Hashable, Any] | None = None


@contextmanager
def shared_objects() -> Iterator[dict]:
    """Within the block, ``get`` keeps what it loads (nested blocks share the outer store)."""
    global _STORE
    outer = _STORE
    if _STORE is None:
        _STORE = {}
    try:
        yield _STORE
    finally:
        _STORE = outer


def get(key: Hashable, load: Callable[[], Any], *, mutable: bool) -> Any:
    """``load()`` outside ``shared_objects``; inside it, one load per key (a deep copy each time if ``mutable``)."""
    if _STORE is None:
        return load()
    if key not in _STORE:
        _STORE[key] = load()
    return copy.deepcopy(_STORE[key]) if mutable else _STORE[key]
