"""A fast trunk and slow branches: candidates for engines that move a path's sequences as one group (helix).

On such an engine (planner/engines.py: GROUP_ENGINES) a path serves the sequences it holds in flight over
one round trip of its group, which walks every layer of the path; and it holds as many as the scarcest
KV along the path admits. One chain over fast and slow GPUs puts every request on every GPU: the fast
GPUs hold many layers and so little KV, and every group walks every slow layer. Here the GPUs of the
fastest type form a trunk holding the last (or the first) layers, each few enough to leave it KV room,
and the other GPUs form 1 to MAX_BRANCHES parallel branches, each one chain over the other layers. A
request holds KV on one branch only, and its group walks that branch's slow layers only. On the Helix
paper's 24-GPU cluster, Helix's own simulator serves two such branches into four A100s of 10 layers each
(the plan this module gives there) at 269.6 tokens/s and with 9 layers at 291.6, where one chain of the
same GPUs serves 161.4 and Helix's own layout 248.3 (docs/planner.md#the-helix-24-gpu-cluster).

Candidates: every layer count per trunk GPU, every branch count, branches ahead of the trunk and after it;
the serving estimate ranks them with everything else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from planner.problem import Placement, PlacementProblem
from planner.solvers.short_trips import distinct_placements, joined, layer_time, room, snake_deal

MAX_BRANCHES = 4


def _branch(problem: PlacementProblem, names: list[str], start: int, layers: int,
            in_flight: int) -> dict[str, tuple[int, int]] | None:
    """One chain of `names` (fastest first) over [start, start + layers): each GPU takes the most layers that
    leave it KV room for `in_flight` requests; GPUs left over stay idle. None if they cannot cover it."""
    ranges, at, end = {}, start, start + layers
    for name in names:
        if at == end:
            break
        k = room(problem, name, at, in_flight, most=end - at)
        if k > 0:
            ranges[name] = (at, at + k)
            at += k
    return ranges if at == end else None


def branch_placements(problem: PlacementProblem, deadline: float = math.inf) -> list[Placement]:
    """One candidate per (layers per trunk GPU, number of branches, branches ahead of or after the trunk)
    that holds the model."""
    if problem.static:
        return []
    names = [n.name for n in problem.nodes]
    params = problem.cluster.cost_params
    batch = max(1.0, min(params.max_batch, params.prefill_chunk_tokens / 4))
    speed = {n: layer_time(problem, n, batch) for n in names}
    ranked = sorted(names, key=lambda n: (speed[n], names.index(n)))
    fastest = problem.by_name[ranked[0]].gpu
    trunk = [n for n in ranked if problem.by_name[n].gpu == fastest]
    rest = [n for n in ranked if n not in trunk]
    if not rest:
        return []
    total = problem.layers

    def found() -> Iterator[dict[str, tuple[int, int]] | None]:
        for per_gpu in range(1, total // len(trunk) + 1):
            trunk_layers = per_gpu * len(trunk)
            if trunk_layers >= total:
                return
            for ahead in (True, False):   # branches over the first layers, the trunk after them; or the reverse
                trunk_start = total - trunk_layers if ahead else 0
                spans = [(trunk_start + i * per_gpu, trunk_start + (i + 1) * per_gpu) for i in range(len(trunk))]
                if not all(problem.fits(n, *span) for n, span in zip(trunk, spans)):
                    continue
                first, last = spans[0][0] == 0, spans[-1][1] == total
                # the trunk holds every request in flight: the branches are planned for its KV room
                trunk_room = min(problem.cost(n).max_batch(per_gpu, first and i == 0, last and i == len(trunk) - 1)
                                 for i, n in enumerate(trunk))
                if trunk_room < 1:
                    continue
                branch_start = 0 if ahead else trunk_layers
                for count in range(1, min(MAX_BRANCHES, len(rest)) + 1):
                    if time.perf_counter() > deadline:
                        return
                    branches = joined(_branch(problem, group, branch_start, total - trunk_layers,
                                              math.ceil(trunk_room / count)) for group in snake_deal(rest, count))
                    yield None if branches is None else {**dict(zip(trunk, spans)), **branches}

    return distinct_placements(names, found())
