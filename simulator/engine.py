"""The event core: a heap of (time, seq, handler, payload), and nothing else.

An event is a handler (any callable `handler(time, payload)`) due at a time. A handler returns the
events it causes, as `(time, handler, payload)` tuples (or None), and the loop schedules them: events
return the events they cause. `seq` is a counter owned by the loop, so events due at one time fire in
the order they were caused and a run is deterministic. No processes, no generators: per event, one
heap pop, one call, and a push per caused event.
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Any, Callable, Iterable, Optional

Handler = Callable[[float, Any], Optional[Iterable[tuple]]]


class EventLoop:
    def __init__(self) -> None:
        self._heap: list[tuple] = []
        self._seq = 0
        self.now = 0.0
        self.fired = 0  # events handled so far

    def schedule(self, time: float, handler: Handler, payload: Any = None) -> None:
        heappush(self._heap, (time, self._seq, handler, payload))
        self._seq += 1

    def schedule_all(self, events: Iterable[tuple] | None) -> None:
        for time, handler, payload in events or ():
            self.schedule(time, handler, payload)

    @property
    def pending(self) -> int:
        return len(self._heap)

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def run(self, until: float) -> None:
        """Fire every event due at or before `until`, in (time, seq) order; leave `now` at `until`."""
        heap, pop, push = self._heap, heappop, heappush
        seq, fired = self._seq, 0
        while heap:
            event = pop(heap)
            time = event[0]
            if time > until:   # not due yet: back where it was (same seq, same place in the order)
                push(heap, event)
                break
            caused = event[2](time, event[3])
            fired += 1
            if caused:
                for time, handler, payload in caused:
                    push(heap, (time, seq, handler, payload))
                    seq += 1
        self._seq, self.fired = seq, self.fired + fired
        self.now = until
