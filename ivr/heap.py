"""Keep the garbage collector's full passes short in long-running processes."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect once, then move everything alive into the collector's permanent generation.

    What start-up built (modules, SDK clients, models, a call plan) lives as long as the process;
    a full pass would walk all of it again every time (60-100 ms for a loaded server, with every
    call's audio stalled on the loop meanwhile). Frozen, it is skipped; objects made later are
    collected as usual."""
    gc.collect()
    gc.freeze()
