"""The event core: a heap of (time, seq, handler, payload), and nothing else.

An event is a handler (any callable `handler(time, payload)`) due at a time. A handler schedules the
events it causes itself, pushing `(time, next(loop.seq), handler, payload)` onto `loop.heap` (or
through `schedule`): `seq` comes from one counter, so events due at one time fire in the order they
were caused and a run is deterministic. No processes, no generators, no lists of caused events: per
event, one heap pop, one call, and a push per caused event.
"""

from __future__ import annotations

from heapq import heappop, heappush
from itertools import count
from typing import Any, Callable

Handler = Callable[[float, Any], None]


class EventLoop:
    def __init__(self) -> None:
        self.heap: list[tuple] = []
        self.seq = count()   # shared with the handlers that push onto the heap themselves
        self.now = 0.0
        self.fired = 0       # events handled so far

    def schedule(self, time: float, handler: Handler, payload: Any = None) -> None:
        heappush(self.heap, (time, next(self.seq), handler, payload))

    def run(self, until: float) -> None:
        """Fire every event due at or before `until`, in (time, seq) order; leave `now` at `until`."""
        heap, pop = self.heap, heappop
        fired = 0
        while heap:
            time, seq, handler, payload = pop(heap)
            if time > until:   # not due yet: back where it was (same seq, same place in the order)
                heappush(heap, (time, seq, handler, payload))
                break
            handler(time, payload)
            fired += 1
        self.fired += fired
        self.now = until
