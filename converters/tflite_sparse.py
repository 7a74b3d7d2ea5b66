"""TFLite's sparse tensors (``SparsityParameters``: a traversal order, blocks, and per dimension DENSE or
SPARSE_CSR metadata) made dense at import, so DENSIFY and the layers after it see ordinary weights.

The stored values are visited in the traversal order of the *expanded* dimensions (the original ones, counted
in blocks where ``block_map`` blocks them, then the block dimensions): a DENSE level runs over its ``dense_size``
positions, a SPARSE_CSR level over the indices ``array_indices[segments[p] : segments[p + 1]]`` of its parent
position ``p``. Every value lands at the original coordinate ``block * block_size + offset``. Segments, indices
and sizes are checked against the tensor's shape and the number of stored values first.
"""
from __future__ import annotations

import numpy as np

from edgedl.errors import ModelFormatError

_DENSE, _SPARSE_CSR = 0, 1


def _index_vector(tfl, kind: int, table, what: str) -> np.ndarray:
    cls = {1: tfl.Int32Vector, 2: tfl.Uint16Vector, 3: tfl.Uint8Vector}.get(int(kind))
    if cls is None or table is None:
        raise ModelFormatError(f"{what}: a sparse dimension without its index vector")
    v = cls()
    v.Init(table.Bytes, table.Pos)
    return v.ValuesAsNumpy().astype(np.int64) if v.ValuesLength() else np.zeros(0, np.int64)


def densify(tfl, sparsity, values: np.ndarray, shape: tuple, name: str) -> np.ndarray:
    """The dense array of ``shape`` holding the stored ``values`` (1-D) placed by ``sparsity``."""
    n = len(shape)
    order = [int(v) for v in sparsity.TraversalOrderAsNumpy()] if sparsity.TraversalOrderLength() else list(range(n))
    block_map = [int(v) for v in sparsity.BlockMapAsNumpy()] if sparsity.BlockMapLength() else []
    levels = sparsity.DimMetadataLength()
    total = n + len(block_map)
    if sorted(order) != list(range(total)) or levels != total or any(not 0 <= d < n for d in block_map):
        raise ModelFormatError(f"tensor {name!r}: inconsistent sparsity (traversal order {order}, block map "
                               f"{block_map}, {levels} dimension records for rank {n})")
    metas = []
    for level in range(levels):
        m = sparsity.DimMetadata(level)
        if m.Format() == _DENSE:
            metas.append((_DENSE, int(m.DenseSize()), None, None))
        elif m.Format() == _SPARSE_CSR:
            seg = _index_vector(tfl, m.ArraySegmentsType(), m.ArraySegments(), f"tensor {name!r}")
            idx = _index_vector(tfl, m.ArrayIndicesType(), m.ArrayIndices(), f"tensor {name!r}")
            metas.append((_SPARSE_CSR, 0, seg, idx))
        else:
            raise ModelFormatError(f"tensor {name!r}: unknown sparse dimension format {m.Format()}")
    # the size of each expanded dimension (block dimensions: the dense size recorded at their level)
    sizes = [0] * total
    for level, dim in enumerate(order):
        if dim >= n:
            kind, size, _, _ = metas[level]
            if kind != _DENSE or size < 1:
                raise ModelFormatError(f"tensor {name!r}: a block dimension must be dense")
            sizes[dim] = size
    block_of = {d: n + k for k, d in enumerate(block_map)}
    for d in range(n):
        bsize = sizes[block_of[d]] if d in block_of else 1
        if shape[d] % bsize:
            raise ModelFormatError(f"tensor {name!r}: dimension {d} ({shape[d]}) is not a multiple of its block "
                                   f"size {bsize}")
        sizes[d] = shape[d] // bsize
    dense = np.zeros(shape, values.dtype)
    coords = [0] * total
    state = {"next": 0}

    def place() -> None:
        k = state["next"]
        if k >= values.size:
            raise ModelFormatError(f"tensor {name!r}: the sparsity visits more values than the {values.size} stored")
        at = tuple(coords[d] * (sizes[block_of[d]] if d in block_of else 1) + (coords[block_of[d]] if d in block_of
                                                                                  else 0) for d in range(n))
        dense[at] = values[k]
        state["next"] = k + 1

    def visit(level: int, parent: int) -> None:
        if level == total:
            place()
            return
        kind, size, seg, idx = metas[level]
        dim = order[level]
        if kind == _DENSE:
            if size != sizes[dim]:
                raise ModelFormatError(f"tensor {name!r}: dense size {size} at level {level}, expected {sizes[dim]}")
            for i in range(size):
                coords[dim] = i
                visit(level + 1, parent * size + i)
            return
        if parent + 1 >= seg.size:
            raise ModelFormatError(f"tensor {name!r}: sparse segments end before position {parent}")
        lo, hi = int(seg[parent]), int(seg[parent + 1])
        if not 0 <= lo <= hi <= idx.size:
            raise ModelFormatError(f"tensor {name!r}: sparse segment [{lo}, {hi}) outside its {idx.size} indices")
        for j in range(lo, hi):
            c = int(idx[j])
            if not 0 <= c < sizes[dim]:
                raise ModelFormatError(f"tensor {name!r}: sparse index {c} outside dimension size {sizes[dim]}")
            coords[dim] = c
            visit(level + 1, j)

    visit(0, 0)
    if state["next"] != values.size:
        raise ModelFormatError(f"tensor {name!r}: {values.size} values stored, the sparsity places {state['next']}")
    return dense
