"""The two trees the platform reasons over: the ISO 18245 MCC hierarchy and the product taxonomy.

Both are small, fixed and shipped with the package; hyperbolic embeddings, the HGCN expert, the OT ground
cost and the reason glossary all read them from here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from ple_platform.core.data.schema import PRODUCT_GROUPS, PRODUCTS


@dataclass(frozen=True)
class Tree:
    """A rooted tree as parallel arrays. Node 0 is the root; ``parent[0] == -1``."""

    names: tuple[str, ...]
    parent: np.ndarray  # int64 (n_nodes,)
    depth: np.ndarray  # int64 (n_nodes,)

    @property
    def n_nodes(self) -> int:
        return len(self.names)

    def edges(self) -> np.ndarray:
        """(n_nodes - 1, 2) array of (parent, child) pairs."""
        child = np.arange(1, self.n_nodes)
        return np.stack([self.parent[1:], child], axis=1)

    def path_to_root(self, node: int) -> list[int]:
        path = [node]
        while self.parent[path[-1]] >= 0:
            path.append(int(self.parent[path[-1]]))
        return path

    def distance_matrix(self) -> np.ndarray:
        """Hop distance between every pair of nodes (small trees only: O(n^2 depth))."""
        n = self.n_nodes
        ancestors = [self.path_to_root(i) for i in range(n)]
        dist = np.zeros((n, n), dtype=np.float64)
        for i in range(n):
            pos_i = {a: k for k, a in enumerate(ancestors[i])}
            for j in range(i + 1, n):
                for k, a in enumerate(ancestors[j]):
                    if a in pos_i:
                        dist[i, j] = dist[j, i] = pos_i[a] + k
                        break
        return dist


def _build_tree(leaf_paths: list[tuple[str, ...]], root: str) -> tuple[Tree, np.ndarray]:
    """Build a tree from root-to-leaf label paths; return it and the node index of each leaf path."""
    names, parent, depth = [root], [-1], [0]
    index: dict[tuple[str, ...], int] = {(): 0}
    leaves = []
    for path in leaf_paths:
        for d in range(1, len(path) + 1):
            key = path[:d]
            if key not in index:
                index[key] = len(names)
                names.append(path[d - 1])
                parent.append(index[key[:-1]])
                depth.append(d)
        leaves.append(index[path])
    return Tree(tuple(names), np.asarray(parent, dtype=np.int64), np.asarray(depth, dtype=np.int64)), np.asarray(leaves)


@dataclass(frozen=True)
class MccHierarchy:
    codes: np.ndarray  # int16 (n_codes,), sorted ascending
    descriptions: tuple[str, ...]
    l2_names: tuple[str, ...]
    l1_names: tuple[str, ...]
    code_l2: np.ndarray  # int64 (n_codes,) index into l2_names
    code_l1: np.ndarray  # int64 (n_codes,) index into l1_names
    l2_l1: np.ndarray  # int64 (n_l2,) index into l1_names
    tree: Tree  # root -> L1 -> L2 -> code
    code_node: np.ndarray  # node index of each code in ``tree``

    @property
    def n_codes(self) -> int:
        return len(self.codes)

    def code_index(self, mcc: np.ndarray) -> np.ndarray:
        """Position of each MCC code in ``codes``; -1 for codes outside the hierarchy."""
        mcc = np.asarray(mcc)
        pos = np.searchsorted(self.codes, mcc)
        pos = np.clip(pos, 0, len(self.codes) - 1)
        return np.where(self.codes[pos] == mcc, pos, -1)


@lru_cache(maxsize=1)
def mcc_hierarchy() -> MccHierarchy:
    text = resources.files("ple_platform.core.data").joinpath("mcc_hierarchy.csv").read_text()
    rows = sorted(csv.DictReader(text.splitlines()), key=lambda r: int(r["mcc"]))
    l1_names = tuple(dict.fromkeys(r["l1"] for r in sorted(rows, key=lambda r: r["l1"])))
    l2_names = tuple(dict.fromkeys(r["l2"] for r in sorted(rows, key=lambda r: (r["l1"], r["l2"]))))
    l2_l1 = {r["l2"]: l1_names.index(r["l1"]) for r in rows}
    tree, leaves = _build_tree([(r["l1"], r["l2"], r["mcc"]) for r in rows], root="all_merchants")
    return MccHierarchy(
        codes=np.asarray([int(r["mcc"]) for r in rows], dtype=np.int16),
        descriptions=tuple(r["description"] for r in rows),
        l2_names=l2_names,
        l1_names=l1_names,
        code_l2=np.asarray([l2_names.index(r["l2"]) for r in rows], dtype=np.int64),
        code_l1=np.asarray([l1_names.index(r["l1"]) for r in rows], dtype=np.int64),
        l2_l1=np.asarray([l2_l1[n] for n in l2_names], dtype=np.int64),
        tree=tree,
        code_node=leaves,
    )


@lru_cache(maxsize=1)
def product_tree() -> tuple[Tree, np.ndarray]:
    """root -> product group -> product; returns the tree and the node index of each product (by index)."""
    paths = [(p.group, p.name) for p in PRODUCTS]
    order = sorted(range(len(paths)), key=lambda i: (PRODUCT_GROUPS.index(paths[i][0]), i))
    tree, leaves_sorted = _build_tree([paths[i] for i in order], root="all_products")
    leaves = np.empty(len(paths), dtype=np.int64)
    leaves[np.asarray(order)] = leaves_sorted
    return tree, leaves
