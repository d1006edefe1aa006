"""Segment growth: the dependency graph of Algorithm 2, lines 2-10 (spec §3.1)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from otov3.graph.types import IN, OUT, TraceGraph, VertexKind

_SEGMENT_ENDERS = (VertexKind.JOINT, VertexKind.MERGE, VertexKind.UNKNOWN)


@dataclass(frozen=True)
class Segment:
    """A maximal chain of trace vertices: one vertex of the dependency graph.

    Attributes:
        id: index in `DependencyGraph.segments`.
        vertices: trace vertices in data-flow order.
        is_joint: a one-vertex segment holding a joint, merge or unknown op.
    """

    id: int
    vertices: tuple[str, ...]
    is_joint: bool

    @property
    def last(self) -> str:
        return self.vertices[-1]


@dataclass(frozen=True)
class DependencyGraph:
    """Segments and the edges between them; `IN`/`OUT` stay as virtual endpoints.

    Attributes:
        segments: all segments, ids are positions.
        seg_of: trace vertex -> segment id.
        succ: segment id -> successor segment ids (`-1` stands for `OUT`).
        pred: segment id -> predecessor segment ids (`-1` stands for `IN`).
        outputs: segments that feed `OUT`.
    """

    segments: tuple[Segment, ...]
    seg_of: dict[str, int]
    succ: dict[int, tuple[int, ...]]
    pred: dict[int, tuple[int, ...]]
    outputs: tuple[int, ...]


VIRTUAL = -1  # IN as a predecessor, OUT as a successor


def _is_joint_or_merge(trace: TraceGraph, v: str) -> bool:
    return trace.vertices[v].traits.kind in _SEGMENT_ENDERS or trace.data_in_degree(v) > 1


def build_dependency_graph(trace: TraceGraph) -> DependencyGraph:
    """Group the trace vertices into segments (BFS over segments, DFS along chains), in O(|V|+|E|).

    Joints (and merges/unknowns) are one-vertex segments; a multi-outgoing vertex ends its segment and stays
    in it; a segment may run into `OUT`.
    """
    seg_of: dict[str, int] = {}
    chains: list[tuple[tuple[str, ...], bool]] = []
    queue = deque(w for w in trace.successors(IN) if w != OUT)
    while queue:
        v = queue.popleft()
        if v in seg_of:
            continue
        sid = len(chains)
        if _is_joint_or_merge(trace, v):
            seg_of[v] = sid
            chains.append(((v,), True))
            queue.extend(w for w in trace.successors(v) if w != OUT)
            continue
        chain = []
        u = v
        while True:
            chain.append(u)
            seg_of[u] = sid
            succ = trace.successors(u)
            if len(succ) != 1:
                break
            w = succ[0]
            if w == OUT or w in seg_of or _is_joint_or_merge(trace, w):
                break
            u = w
        chains.append((tuple(chain), False))
        queue.extend(w for w in trace.successors(chain[-1]) if w != OUT)

    segments = tuple(Segment(i, verts, joint) for i, (verts, joint) in enumerate(chains))
    succ: dict[int, list[int]] = {s.id: [] for s in segments}
    pred: dict[int, list[int]] = {s.id: [] for s in segments}
    outputs: list[int] = []
    for s in segments:
        if IN in trace.predecessors(s.vertices[0]):
            pred[s.id].append(VIRTUAL)
        for w in trace.successors(s.last):
            if w == OUT:
                succ[s.id].append(VIRTUAL)
                outputs.append(s.id)
                continue
            t = seg_of[w]
            if t not in succ[s.id]:
                succ[s.id].append(t)
                pred[t].append(s.id)
    return DependencyGraph(
        segments=segments,
        seg_of=seg_of,
        succ={k: tuple(v) for k, v in succ.items()},
        pred={k: tuple(v) for k, v in pred.items()},
        outputs=tuple(outputs),
    )
