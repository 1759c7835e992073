"""LSH banding, candidate pairs, union-find and histograms: known answers and reference-vs-fast."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedup.buckets import band_keys, bucket_pairs, exact_pairs, partition_of
from pipeline.dedup.clusters import histogram_rows, size_bin, size_histogram
from pipeline.dedup.config import candidate_probability
from pipeline.dedup.unionfind import connected_components

u64 = lambda *xs: np.array(xs, dtype=np.uint64)  # noqa: E731


def reference_components(edges: list[tuple[int, int]]) -> dict[int, int]:
    """Plain dict union-find: node -> smallest node of its component."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in list(parent)}


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=60), st.randoms())
def test_connected_components_match_a_reference_union_find_in_any_edge_order(edges, rnd):
    expected = reference_components(edges)
    shuffled = list(edges)
    rnd.shuffle(shuffled)
    a = np.array([e[0] for e in shuffled], np.uint64)
    b = np.array([e[1] for e in shuffled], np.uint64)
    nodes, roots = connected_components(a, b)
    assert dict(zip(nodes.tolist(), roots.tolist())) == expected


def test_a_long_chain_is_one_component_labelled_by_its_smallest_key():
    keys = np.random.default_rng(0).permutation(2000).astype(np.uint64) + np.uint64(10)
    nodes, roots = connected_components(keys[:-1], keys[1:])
    assert set(roots.tolist()) == {10}
    assert nodes.size == 2000


def test_exact_pairs_link_every_copy_to_the_smallest_key():
    a, first = exact_pairs(u64(7, 7, 9, 7), u64(30, 10, 5, 20))
    assert sorted(zip(a.tolist(), first.tolist())) == [(20, 10), (30, 10)]


def test_a_small_bucket_yields_all_its_pairs_once():
    band = u64(1, 1, 1, 2, 2, 3)
    keys = u64(10, 30, 20, 40, 50, 60)
    a, b, buckets = bucket_pairs(band, keys, u64(1, 2, 3, 4, 5, 6), window=8)
    assert sorted(zip(a.tolist(), b.tolist())) == [(10, 20), (10, 30), (20, 30), (40, 50)]
    assert buckets == 2


def test_a_huge_bucket_yields_a_linear_number_of_pairs_that_still_connect_it():
    n = 500
    a, b, _ = bucket_pairs(np.ones(n, np.uint64), np.arange(n, dtype=np.uint64), np.arange(n, dtype=np.uint64), 4)
    assert a.size == sum(n - d for d in range(1, 5))  # not n*(n-1)/2
    nodes, roots = connected_components(a, b)
    assert nodes.size == n and set(roots.tolist()) == {0}


def test_copies_with_equal_content_count_once_in_a_bucket():
    a, b, _ = bucket_pairs(u64(1, 1, 1), u64(10, 11, 12), u64(5, 5, 6), window=8)
    assert sorted(zip(a.tolist(), b.tolist())) == [(10, 12)]  # 11 collapsed onto 10 (same content)


def test_pairs_do_not_depend_on_entry_order():
    rng = np.random.default_rng(3)
    band = rng.integers(0, 20, 300).astype(np.uint64)
    keys = rng.permutation(300).astype(np.uint64)
    exact = keys.copy()
    a1, b1, _ = bucket_pairs(band, keys, exact, 3)
    p = rng.permutation(300)
    a2, b2, _ = bucket_pairs(band[p], keys[p], exact[p], 3)
    assert a1.tolist() == a2.tolist() and b1.tolist() == b2.tolist()


def test_band_keys_depend_on_values_and_band_number():
    sig = np.array([[1, 2, 1, 2], [1, 2, 9, 9], [1, 2, 1, 2]], np.uint32)
    keys = band_keys(sig, bands=2, rows=2)
    assert keys[0, 0] == keys[1, 0] == keys[2, 0]
    assert keys[0, 1] != keys[1, 1]
    assert keys[0, 0] != keys[0, 1]  # equal values in two bands are different buckets


def test_partitions_split_the_hash_range_into_equal_ranges():
    hashes = u64(0, 2**63 - 1, 2**63, 2**64 - 1)
    assert partition_of(hashes, 2).tolist() == [0, 0, 1, 1]
    spread = np.bincount(partition_of(np.random.default_rng(0).integers(0, 2**64, 40000, dtype=np.uint64), 8))
    assert spread.min() > 4500


def test_scurve_known_values():
    assert abs(candidate_probability(0.55, 40, 3) - 0.9993) < 1e-4
    assert abs(candidate_probability(0.1, 40, 3) - (1 - 0.999**40)) < 1e-9
    curve = candidate_probability(np.linspace(0, 1, 11), 40, 3)
    assert (np.diff(curve) >= 0).all() and curve[0] == 0 and curve[-1] == 1


def test_cluster_size_bins_and_histogram():
    assert [size_bin(s) for s in (1, 2, 4, 5, 8, 9, 16, 17)] == ["1", "2", "4", "5-8", "5-8", "9-16", "9-16", "17-32"]
    assert size_histogram(np.array([2, 2, 3, 6]), singletons=10) == {"1": 10, "2": 2, "3": 1, "5-8": 1}
    # a JSON round trip sorts keys as strings; display order is by size
    assert [k for k, _ in histogram_rows({"129-256": 1, "2": 3, "1": 5, "33-64": 2})] == ["1", "2", "33-64", "129-256"]
