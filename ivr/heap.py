"""Keep the garbage collector's passes few and short in long-running processes."""

from __future__ import annotations

import gc

#: Container objects allocated between two young-generation passes (Python's default is 700).
#: A call's frames, messages and futures die young, freed by their reference counts; a pass
#: every 700 allocations walked the survivors of the moment some 11 times a second per
#: 150 calls, 2.5 % of the server's CPU with its middle and full passes. At 10 000 the same
#: load spends about a quarter of that, in passes of ~3 ms (a frame is 20 ms).
YOUNG_THRESHOLD = 10_000
#: Young passes per middle pass; the full pass keeps Python's own rule (its third threshold).
MIDDLE_EVERY = 20


def freeze_startup_objects() -> None:
    """Collect once, then move everything alive into the collector's permanent generation,
    and space the collector's passes out for a process that allocates all day.

    What start-up built (modules, SDK clients, models, a call plan) lives as long as the process;
    a full pass would walk all of it again every time (60-100 ms for a loaded server, with every
    call's audio stalled on the loop meanwhile). Frozen, it is skipped; objects made later are
    collected as usual."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_EVERY, gc.get_threshold()[2])
