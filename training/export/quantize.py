"""Weight-only int8: a copy of an fp32 ONNX graph whose large MatMul weights are stored as int8.

A single query through a 110M-parameter encoder is bound by reading its weights, not by arithmetic
(all-mpnet-base-v2 in bf16 reads ~170 MB of MatMul weights per call), so halving the bytes read
halves its latency; activations stay in floating point (bf16 or fp32, as the backend runs them).

Scheme: symmetric int8 per output channel and per group of `group` consecutive input channels
(scale = max |w| of the group / 127). One scale per whole output channel, the usual weight-only
scheme, is not exact enough here: all-mpnet-base-v2's minimum cosine to PyTorch over 1,000 STS-B
sentences is 0.9979 with it, under the serving bar of 0.999; with groups of 128 it is 0.9997.

Layout: each weight W (K, N) becomes q (N, K / group, group) int8 and scale (N, K / group, 1) fp32,
rebuilt in the graph as Transpose(Reshape(Cast(q) * scale, (N, K))). That is the compressed-weight
pattern OpenVINO's CPU plugin recognises (Convert -> Multiply -> Reshape -> Transpose -> MatMul), so
it keeps the weights in int8 and decompresses them inside the matrix multiply. A runtime that does
not recognise it (onnxruntime) folds the subgraph back to fp32 weights when it loads the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_GROUP = 128
MIN_WEIGHTS = 65_536  # smaller matrices are not worth a decompression step


def quantize_group(weight: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) fp32 -> q (N, K / group, group) int8 and scale (N, K / group, 1) fp32, such that
    (q * scale).reshape(N, K).T approximates `weight`; an all-zero group gets scale 1."""
    k, n = weight.shape
    grouped = weight.T.reshape(n, k // group, group)  # (N, K/g, g)
    scale = np.abs(grouped).max(axis=-1, keepdims=True) / 127.0  # (N, K/g, 1)
    scale[scale == 0] = 1.0
    q = np.clip(np.round(grouped / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def weight_only_int8(source: Path, target: Path, group: int = DEFAULT_GROUP, min_weights: int = MIN_WEIGHTS) -> int:
    """Write `source` with its eligible MatMul weights (2-D initializers of at least `min_weights`
    values whose input size divides by `group`) in int8 to `target`; returns how many were
    quantised (0: nothing written, the graph has nothing worth quantising)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    nodes = []
    quantised = 0
    for node in graph.node:
        name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else ""
        init = initializers.get(name)
        # A weight shared with another node keeps its fp32 initializer for that node: left alone.
        if init is not None and len(init.dims) == 2 and consumers[name] == 1:
            weight = numpy_helper.to_array(init).astype(np.float32)
            k, n = weight.shape
            if weight.size >= min_weights and k % group == 0:
                q, scale = quantize_group(weight, group)
                graph.initializer.remove(init)
                graph.initializer.extend(
                    [
                        numpy_helper.from_array(q, f"{name}.int8"),
                        numpy_helper.from_array(scale, f"{name}.scale"),
                        numpy_helper.from_array(np.array([n, k], dtype=np.int64), f"{name}.shape"),
                    ]
                )
                nodes += [
                    helper.make_node("Cast", [f"{name}.int8"], [f"{name}.cast"], to=TensorProto.FLOAT),
                    helper.make_node("Mul", [f"{name}.cast", f"{name}.scale"], [f"{name}.scaled"]),
                    helper.make_node("Reshape", [f"{name}.scaled", f"{name}.shape"], [f"{name}.nk"]),
                    helper.make_node("Transpose", [f"{name}.nk"], [name], perm=[1, 0]),
                ]
                quantised += 1
        nodes.append(node)
    if quantised:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
        onnx.save(model, str(target))
    return quantised
