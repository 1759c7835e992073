"""Connected components of an edge list, vectorised with numpy (union-find by min-label hooking).

Nodes are 64-bit document keys. Each component is labelled with its smallest key, so the labelling
depends only on the set of edges, never on their order. Memory is a few arrays the size of the node and
edge lists: only documents that have a duplicate appear here.
"""

from __future__ import annotations

import numpy as np


def connected_components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, roots): the sorted distinct nodes of edges a[i]-b[i] and the smallest node of each one's
    component.

    Each round hooks, for every edge whose endpoints have different roots, the larger root under the
    smaller one, then compresses paths by pointer jumping until every node points at a root. Roots only
    ever decrease, and every round merges at least one pair of components, so it terminates; on the
    graphs dedup produces (small, shallow clusters) it takes a handful of rounds.
    """
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    nodes = np.unique(np.concatenate([a, b]))
    if nodes.size == 0:
        return nodes, nodes.copy()
    ia = np.searchsorted(nodes, a)
    ib = np.searchsorted(nodes, b)
    parent = np.arange(nodes.size)  # node indices are in key order, so min index = min key
    while True:
        ra, rb = parent[ia], parent[ib]
        differ = ra != rb
        if not differ.any():
            break
        lo = np.minimum(ra[differ], rb[differ])
        hi = np.maximum(ra[differ], rb[differ])
        np.minimum.at(parent, hi, lo)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return nodes, nodes[parent]
