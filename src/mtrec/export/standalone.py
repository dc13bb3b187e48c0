"""A model file that stands alone: raw values in, each task's prediction out, the encoders inside the graph.

:func:`raw_input_graph` builds an ONNX graph that does what :meth:`FeatureEncoders.encode` does, and
:func:`standalone_model` joins it in front of the exported scoring graph (:mod:`mtrec.export.scoring`),
so that a client needs only ONNX Runtime: no run directory, no ``encoders.json``, no mtrec.

Inputs, one per feature of the schema, named after it (the column names of ``mtrec predict``'s input):

- a sparse feature: ``string [B]``, the raw value as text, as a CSV holds it (``"u42"``, ``"39"``); a
  missing value is the empty string;
- a dense feature: ``double [B]``, the number; a missing value is NaN (a client maps an empty field, or
  one of the dataset's ``missing_values``, to NaN);
- a sequence feature with a separator: ``string [B]``, the history joined by its separator
  (``"i1|i9|i3"``), as a CSV holds it; without a separator: ``string [B, W]``, one token per position, the
  empty string for none.

Inside the graph (where ONNX differs from the NumPy code, the choice is exact for the values a CSV holds):

- vocabulary lookup: one ``ai.onnx.ml`` ``LabelEncoder`` per embedding table (known values -> ids from 2,
  anything else -> the OOV id 1), shared by every feature of the table;
- ``strip``: each value is split on single spaces and rejoined without its leading and trailing empty
  parts: surrounding spaces are trimmed, inner ones kept; other whitespace (tabs, line breaks) is not
  trimmed;
- histories: split on the separator (``StringSplit``), empty and pad tokens dropped, the first or last
  ``max_len`` tokens kept (the sequence's ``keep``), left-aligned, padded with id 0;
- dense: ``sign(x) * log(1 + |x|)`` if ``log1p``, then ``(x - mean) / std`` in float64, clipped to the
  float32 range (``predict`` refuses a value that would overflow; a graph cannot refuse one), then
  float32, NaN -> ``fill``.

Outputs: each task's prediction ``[B]``, named after the task. The model's ``metadata_props`` hold
``mtrec_schema`` and ``mtrec_encoders`` (the run's ``schema.json`` and ``encoders.json``),
``mtrec_version``, ``mtrec_tasks`` (JSON list), ``mtrec_model`` and ``mtrec_inputs`` (``raw`` or ``ids``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper, version_converter

from mtrec.export.model_file import (
    DENSE_INPUT,
    SEQUENCE_PREFIX,
    SPARSE_INPUT,
    array_feeds,
    metadata,
    onnx_session,
    raw_feeds,
)
from mtrec.features.encoders import FeatureEncoders
from mtrec.features.inputs import Features
from mtrec.features.schema import OOV_ID, DatasetSchema
from mtrec.features.vocab import Vocabulary

RAW_OPSET = 20  # StringSplit, StringConcat
ML_OPSET = 3  # ai.onnx.ml LabelEncoder with string keys
ML_DOMAIN = "ai.onnx.ml"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class StandaloneError(ValueError):
    """A run whose model cannot take raw values in one ONNX file (names that collide)."""


@dataclass
class _Graph:
    """The nodes and constants of the graph being built, each output with a unique name."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    constants: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"raw/{hint}/{self.count}"

    def op(self, kind: str, inputs: Sequence[str], hint: str = "", domain: str = "", outputs: int = 1,
           **attributes: Any) -> str:
        """Add one node; the name of its (first) output (``outputs`` > 1: ``name:0``, ``name:1``...)."""
        out = self.fresh(hint or kind)
        names = [out] if outputs == 1 else [f"{out}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(kind, list(inputs), names, name=out, domain=domain or None,
                                           **attributes))
        return names[0]

    def const(self, value: Any, dtype: Any = None, hint: str = "const") -> str:
        array = np.array(value, dtype=object) if isinstance(value, str) else np.asarray(value, dtype=dtype)
        out = self.fresh(hint)
        self.constants.append(numpy_helper.from_array(array, out))
        return out

    def i64(self, *values: int) -> str:
        return self.const(list(values), np.int64, "i64")

    def label_encoder(self, x: str, keys: list[str], values: list[int], default: int, hint: str) -> str:
        """Strings of any shape -> int64 of the same shape: ``values[i]`` for ``keys[i]``, else ``default``."""
        return self.op("LabelEncoder", [x], hint, domain=ML_DOMAIN, keys_strings=keys, values_int64s=values,
                       default_int64=default)

    # ---- strings --------------------------------------------------------------------------------------
    def padded_split(self, x: str, delimiter: str) -> str:
        """Strings ``[...]`` -> their parts ``[..., P + 1]``, padded with empty strings (at least one, so
        the last axis is never empty)."""
        parts = self.op("StringSplit", [x], "split", outputs=2, delimiter=delimiter)
        shape = self.op("Concat", [self.op("Shape", [x]), self.i64(1)], "pad_shape", axis=0)
        pad = self.op("Expand", [self.const(""), shape], "pad")
        return self.op("Concat", [parts, pad], "parts", axis=-1)

    def strip_spaces(self, x: str, max_parts: int) -> str:
        """Strings of any shape without their leading and trailing spaces (inner spaces kept). Only the first
        ``max_parts`` space-separated parts are kept: a longer value has no id anyway (``max_parts`` is one
        more than any vocabulary value has)."""
        parts = self.padded_split(x, " ")  # [..., P]
        filled = self.label_encoder(parts, [""], [0], 1, "filled")  # [..., P] 1 where a part has text
        first = self.op("ArgMax", [filled], "first", axis=-1, keepdims=1)  # [..., 1]
        last = self.op("ArgMax", [filled], "last", axis=-1, keepdims=1, select_last_index=1)
        blank = self.op("Equal", [self.op("ReduceMax", [filled, self.i64(-1)], keepdims=1), self.i64(0)], "blank")
        end = self.op("Sub", [self.op("Shape", [parts], start=-1), self.i64(1)], "end")
        empty, space = self.const(""), self.const(" ")
        text = empty
        for j in range(max_parts):
            index = self.op("Add", [first, self.i64(j)], "index")
            part = self.op("GatherElements", [parts, self.op("Min", [index, end])], "part", axis=-1)
            piece = self.op("StringConcat", [space, part], "spaced") if j else part
            inside = self.op("LessOrEqual", [index, last], "inside")
            text = self.op("StringConcat", [text, self.op("Where", [inside, piece, empty])], "joined")
        return self.op("Squeeze", [self.op("Where", [blank, empty, text]), self.i64(-1)], "stripped")

    # ---- ids ------------------------------------------------------------------------------------------
    def lookup(self, vocab: Vocabulary, texts: list[str], table: str) -> list[str]:
        """Each string tensor of ``texts`` -> its ids (same shape, int64), by one LabelEncoder for the table."""
        values = vocab.to_list()
        ids = list(range(2, len(values) + 2))
        if len(texts) == 1:
            return [self.label_encoder(texts[0], values, ids, OOV_ID, f"ids_{table}")]
        flat = [self.op("Reshape", [t, self.i64(-1)], "flat") for t in texts]
        sizes = self.op("Concat", [self.op("Reshape", [self.op("Size", [t]), self.i64(1)]) for t in texts],
                        "sizes", axis=0)
        all_ids = self.label_encoder(self.op("Concat", flat, "all", axis=0), values, ids, OOV_ID, f"ids_{table}")
        first = self.op("Split", [all_ids, sizes], "split_ids", outputs=len(texts), axis=0)
        parts = [first, *(f"{first.rsplit(':', 1)[0]}:{i}" for i in range(1, len(texts)))]
        return [self.op("Reshape", [p, self.op("Shape", [t])], "ids") for p, t in zip(parts, texts, strict=True)]

    def history(self, tokens: str, ids: str, pad_values: Sequence[str], max_len: int, keep: str) -> str:
        """Tokens ``[B, K]`` and their ids -> the history's ids ``[B, max_len]``: empty and pad tokens dropped,
        the first or last ``max_len`` kept, left-aligned, 0 after them."""
        dropped = ["", *pad_values]
        valid = self.label_encoder(tokens, dropped, [0] * len(dropped), 1, "valid")  # [B, K] 1 = a token
        rank = self.op("Sub", [self.op("CumSum", [valid, self.i64(1)]), valid], "rank")  # 0-based among valid
        length = self.i64(max_len)
        if keep == "last":
            count = self.op("ReduceSum", [valid, self.i64(1)], keepdims=1)  # [B, 1]
            start = self.op("Max", [self.op("Sub", [count, length]), self.i64(0)], "start")
            position = self.op("Sub", [rank, start], "position")
            kept = self.op("GreaterOrEqual", [position, self.i64(0)], "kept")
        else:
            position = rank
            kept = self.op("Less", [rank, length], "kept")
        kept = self.op("And", [kept, self.op("Cast", [valid], to=TensorProto.BOOL)], "kept")
        target = self.op("Where", [kept, position, length], "target")  # column max_len collects the rest
        batch = self.op("Slice", [self.op("Shape", [tokens]), self.i64(0), self.i64(1)], "batch")
        zeros = self.op("ConstantOfShape", [self.op("Concat", [batch, self.i64(max_len + 1)], axis=0)],
                        value=numpy_helper.from_array(np.zeros(1, dtype=np.int64)))
        updates = self.op("Mul", [ids, self.op("Cast", [kept], to=TensorProto.INT64)], "updates")
        block = self.op("ScatterElements", [zeros, target, updates], "history", axis=1, reduction="add")
        return self.op("Slice", [block, self.i64(0), self.i64(max_len), self.i64(1)], "history")

    def dense(self, x: str, log1p: bool, mean: float, std: float, fill: float) -> str:
        """Numbers ``[B]`` (float64, NaN = missing) -> the model's input ``[B, 1]`` (float32)."""
        if log1p:
            x = self.op("Mul", [self.op("Sign", [x]),
                                self.op("Log", [self.op("Add", [self.op("Abs", [x]), self.const(1.0)])])], "log1p")
        x = self.op("Div", [self.op("Sub", [x, self.const(mean, np.float64)]), self.const(std, np.float64)], "scaled")
        clipped = self.op("Clip", [x, self.const(-_FLOAT32_MAX, np.float64), self.const(_FLOAT32_MAX, np.float64)])
        value = self.op("Cast", [clipped], to=TensorProto.FLOAT)
        filled = self.op("Where", [self.op("IsNaN", [x]), self.const(fill, np.float32), value], "filled")
        return self.op("Unsqueeze", [filled, self.i64(1)], "column")


def _max_parts(vocab: Vocabulary) -> int:
    """One more than the most space-separated parts of any known value (see :meth:`_Graph.strip_spaces`)."""
    return 1 + max((value.count(" ") + 1 for value in vocab.index), default=1)


def raw_input_graph(schema: DatasetSchema, encoders: FeatureEncoders, outputs: Sequence[str]) -> onnx.ModelProto:
    """The graph raw values -> the scoring graph's inputs named in ``outputs`` (``sparse``, ``dense``,
    ``seq__<name>``; see the module docstring for the raw inputs)."""
    encoders.check(schema)
    g = _Graph()
    inputs: list[onnx.ValueInfoProto] = []
    texts: dict[str, str] = {}  # sparse or sequence feature -> its values as text (stripped if asked)
    tokens: dict[str, str] = {}  # sequence feature -> its tokens [B, K]
    for f in schema.sparse:
        inputs.append(helper.make_tensor_value_info(f.name, TensorProto.STRING, ["batch"]))
        texts[f.name] = f.name
    for s in schema.sequences:
        fmt = encoders.sequences[s.name]
        split = fmt.separator is not None
        inputs.append(helper.make_tensor_value_info(s.name, TensorProto.STRING, ["batch"] if split else
                                                    ["batch", f"{s.name}_positions"]))
        vocab = encoders.vocabularies[s.table_name]
        text = g.strip_spaces(s.name, _max_parts(vocab)) if encoders.strip and split else s.name
        if split:
            assert fmt.separator is not None
            parts = g.padded_split(text, fmt.separator)
        else:
            parts = g.op("Concat", [text, g.op("Expand", [g.const(""), g.op("Concat", [
                g.op("Slice", [g.op("Shape", [text]), g.i64(0), g.i64(1)]), g.i64(1)], axis=0)])], "parts", axis=-1)
        tokens[s.name] = g.strip_spaces(parts, _max_parts(vocab)) if encoders.strip else parts
    if encoders.strip:
        for f in schema.sparse:
            texts[f.name] = g.strip_spaces(f.name, _max_parts(encoders.vocabularies[f.table_name]))
    texts.update(tokens)
    by_table: dict[str, list[str]] = {}
    for e in schema.embedded_features:
        by_table.setdefault(e.table_name, []).append(e.name)
    ids: dict[str, str] = {}
    for table, names in by_table.items():
        ids.update(zip(names, g.lookup(encoders.vocabularies[table], [texts[n] for n in names], table), strict=True))

    results: dict[str, str] = {}
    if schema.sparse:
        columns = [g.op("Unsqueeze", [ids[f.name], g.i64(1)]) for f in schema.sparse]
        results[SPARSE_INPUT] = g.op("Concat", columns, "sparse", axis=1)
    dense_columns = []
    for d in schema.dense:
        inputs.append(helper.make_tensor_value_info(d.name, TensorProto.DOUBLE, ["batch"]))
        t = encoders.dense[d.name]
        dense_columns.append(g.dense(d.name, t.log1p, t.mean, t.std, t.fill))
    if dense_columns:
        results[DENSE_INPUT] = g.op("Concat", dense_columns, "dense", axis=1)
    for s in schema.sequences:
        fmt = encoders.sequences[s.name]
        results[SEQUENCE_PREFIX + s.name] = g.history(tokens[s.name], ids[s.name], fmt.pad_values, s.max_len,
                                                      fmt.keep)
    if SPARSE_INPUT in outputs and SPARSE_INPUT not in results:
        raise StandaloneError("the scoring graph reads sparse ids but the schema has no sparse feature")
    if DENSE_INPUT in outputs and DENSE_INPUT not in results:  # [B, 0]
        batch = g.op("Slice", [g.op("Shape", [inputs[0].name]), g.i64(0), g.i64(1)], "batch")
        results[DENSE_INPUT] = g.op("ConstantOfShape", [g.op("Concat", [batch, g.i64(0)], axis=0)], "dense",
                                    value=numpy_helper.from_array(np.zeros(1, dtype=np.float32)))
    graph_outputs = []
    for name in outputs:
        g.nodes.append(helper.make_node("Identity", [results[name]], [name], name=f"raw/output/{name}"))
        graph_outputs.append(helper.make_tensor_value_info(
            name, TensorProto.FLOAT if name == DENSE_INPUT else TensorProto.INT64, None))
    graph = helper.make_graph(g.nodes, "mtrec_raw_inputs", inputs, graph_outputs, initializer=g.constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", RAW_OPSET),
                                                   helper.make_opsetid(ML_DOMAIN, ML_OPSET)])


def raw_input_parity(id_model: bytes, raw_model: bytes, batches: Sequence[Features], schema: DatasetSchema,
                     encoders: FeatureEncoders) -> float:
    """Largest |difference| between the raw-input model and the id-input model on the raw values of
    ``batches`` (decoded by the encoders): the first reads them as a client sends them, the second reads
    what :meth:`FeatureEncoders.encode` makes of them, as ``mtrec predict`` does."""
    sessions = [onnx_session(m) for m in (id_model, raw_model)]
    id_inputs = {i.name for i in sessions[0].get_inputs()}
    worst = 0.0
    for features in batches:
        sequences = {name: block.numpy() for name, block in features.sequences.items()}
        columns = encoders.decode(features.sparse.numpy(), features.dense.numpy(), sequences, schema)
        feeds = array_feeds(*encoders.encode(columns, schema), schema)
        expected = sessions[0].run(schema.task_names, {k: v for k, v in feeds.items() if k in id_inputs})
        got = sessions[1].run(schema.task_names, raw_feeds(columns, schema, encoders))
        for e, g in zip(expected, got, strict=True):
            diff = float(np.abs(g.astype(np.float64) - e).max()) if e.size else 0.0
            worst = max(worst, diff if np.isfinite(diff) else float("inf"))
    return worst


def with_metadata(onnx_model: bytes, props: Mapping[str, str]) -> bytes:
    """A serialized model with ``props`` added to its ``metadata_props`` (a key already there takes the new
    value)."""
    model = onnx.load_from_string(onnx_model)
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **props})
    return bytes(model.SerializeToString())


def standalone_model(id_model: bytes, schema: DatasetSchema, encoders: FeatureEncoders, model_name: str) -> bytes:
    """The exported scoring graph ``id_model`` with :func:`raw_input_graph` in front: raw values in, each
    task's prediction out, with the metadata; StandaloneError when names collide."""
    names = set(schema.feature_names)
    clash = sorted(names & {SPARSE_INPUT, DENSE_INPUT, *schema.task_names,
                            *(SEQUENCE_PREFIX + s.name for s in schema.sequences)})
    if clash:
        raise StandaloneError(f"feature name(s) {clash} are also names of the scoring graph's inputs or outputs; "
                              f"export with --inputs ids")
    scoring = onnx.load_from_string(id_model)
    scoring = version_converter.convert_version(scoring, RAW_OPSET)
    wanted = [i.name for i in scoring.graph.input]
    front = raw_input_graph(schema, encoders, wanted)
    front.ir_version = scoring.ir_version
    merged = compose.merge_models(front, scoring, io_map=[(n, n) for n in wanted])
    versions: dict[str, int] = {}
    for opset in merged.opset_import:  # merge_models lists a domain once per graph: keep one import each
        versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in versions.items())
    helper.set_model_props(merged, metadata(schema, encoders, model_name, "raw"))
    return bytes(merged.SerializeToString())
