"""Graphviz DOT text for the trace graph, the dependency graph and a sub-network (stdlib only)."""

from __future__ import annotations

from collections.abc import Iterable

from otov3.graph.segments import VIRTUAL, DependencyGraph
from otov3.graph.types import IN, OUT, TraceGraph

PALETTE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#bc80bd",
           "#ccebc5", "#ffed6f", "#d9d9d9")


def _q(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def _header(title: str) -> list[str]:
    return [f"digraph {_q(title)} {{", '  rankdir=TB; node [shape=box, style="rounded,filled", fillcolor=white, '
            'fontname=Helvetica, fontsize=10]; edge [color="#555555"];',
            f"  labelloc=t; label={_q(title)};",
            f"  {_q(IN)} [label=input, shape=oval, fillcolor=\"#eeeeee\"];",
            f"  {_q(OUT)} [label=output, shape=oval, fillcolor=\"#eeeeee\"];"]


def trace_dot(trace: TraceGraph, title: str = "trace graph") -> str:
    """Every traced op as a node, data edges between them."""
    lines = _header(title)
    for name, v in trace.vertices.items():
        label = name + "\\n" + v.op
        lines.append(f"  {_q(name)} [label={_q(label)}];")
    for u, succ in trace.succ.items():
        for w in succ:
            lines.append(f"  {_q(u)} -> {_q(w)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dependency_dot(
    trace: TraceGraph,
    dep: DependencyGraph,
    gezig_segments: list[tuple[str, Iterable[int]]],
    zero_segments: Iterable[int] = (),
    title: str = "dependency graph",
) -> str:
    """Segments as nodes; GeZIGs coloured (one colour each), zero GeZIGs dashed, the rest white or grey."""
    colour: dict[int, tuple[str, str]] = {}
    for i, (name, segs) in enumerate(gezig_segments):
        for s in segs:
            colour[s] = (PALETTE[i % len(PALETTE)], name)
    zero = set(zero_segments)
    legend = "coloured: GeZIGs, grey: other parametric segments" + (", dashed red: removed (zero)" if zero else "")
    lines = _header(f"{title}\\n{legend}")
    for seg in dep.segments:
        ops = "-".join(trace.vertices[v].op for v in seg.vertices)
        label = f"S{seg.id}: {ops}"
        if seg.id in colour:
            label += f"\\n[{colour[seg.id][1]}]"
        attrs = [f"label={_q(label)}"]
        if seg.is_joint:
            attrs.append("shape=ellipse")
        if seg.id in colour:
            attrs.append(f"fillcolor={_q(colour[seg.id][0])}")
        elif any(trace.vertices[v].params for v in seg.vertices):
            attrs.append('fillcolor="#dddddd"')
        if seg.id in zero:
            attrs.append('style="rounded,filled,dashed", penwidth=2, color="#cc0000"')
        lines.append(f"  S{seg.id} [{', '.join(attrs)}];")
    for s, succ in dep.succ.items():
        if VIRTUAL in dep.pred[s]:
            lines.append(f"  {_q(IN)} -> S{s};")
        for t in succ:
            target = _q(OUT) if t == VIRTUAL else f"S{t}"
            style = ' [style=dashed, color="#cc0000"]' if s in zero else ""
            lines.append(f"  S{s} -> {target}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def fx_dot(nodes: Iterable[tuple[str, str, list[str]]], title: str = "sub-network") -> str:
    """A generic graph from (name, label, input names) triples, e.g. the nodes of a GraphModule."""
    lines = [f"digraph {_q(title)} {{", '  rankdir=TB; node [shape=box, style="rounded,filled", fillcolor=white, '
             'fontname=Helvetica, fontsize=10];', f"  labelloc=t; label={_q(title)};"]
    for name, label, inputs in nodes:
        lines.append(f"  {_q(name)} [label={_q(label)}];")
        for i in inputs:
            lines.append(f"  {_q(i)} -> {_q(name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def node_group_dot(
    trace: TraceGraph,
    groups: Iterable[tuple[str, Iterable[str], bool, bool]],
    title: str = "channel groups (pruning mode)",
) -> str:
    """Trace ops coloured by node group (name, vertices, prunable, has zero channels): prunable node groups in
    colour, kept ones grey; a node group with zero channel groups gets a dashed red border."""
    colour: dict[str, tuple[str, str, bool, bool]] = {}
    for i, (name, vertices, prunable, zero) in enumerate(groups):
        fill = PALETTE[i % len(PALETTE)] if prunable else "#dddddd"
        for v in vertices:
            colour.setdefault(v, (fill, name, prunable, zero))
    lines = _header(f"{title}\\ncoloured: prunable node groups, grey: kept whole, dashed red: has zero channels")
    for name, v in trace.vertices.items():
        label = name + "\\n" + v.op
        attrs = []
        if name in colour:
            fill, group, _, zero = colour[name]
            label += f"\\n[{group}]"
            attrs.append(f"fillcolor={_q(fill)}")
            if zero:
                attrs.append('style="rounded,filled,dashed", penwidth=2, color="#cc0000"')
        lines.append(f"  {_q(name)} [label={_q(label)}{''.join(', ' + a for a in attrs)}];")
    for u, succ in trace.succ.items():
        for w in succ:
            lines.append(f"  {_q(u)} -> {_q(w)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
