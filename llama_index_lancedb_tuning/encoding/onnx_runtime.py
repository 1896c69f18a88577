"""A sentence-transformers model run by ONNX Runtime, fp32 or int8, as a LlamaIndex embedding.

sentence-transformers' own `backend="onnx"` needs optimum-onnx, which pins transformers<4.58
and so cannot sit beside this package's transformers 5. This module does the same job for
mean- or CLS-pooled encoders: it exports the model's transformer once with `torch.onnx`,
optionally quantises the weights to int8 with ONNX Runtime's dynamic quantisation, and
pools and normalises in numpy. Exports are cached under `~/.cache/llama-index-lancedb-tuning/onnx`
(or `$LANCEDB_TUNE_CACHE/onnx`), with sentence-transformers' file names; the cache keeps the 8
most recently used (`$LANCEDB_TUNE_ONNX_EXPORTS`) and may be removed at any time (`onnx_cache`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from ..errors import TuningError
from . import onnx_cache
from .model_ids import resolve_model, transformers_bars_off
from .replicas import ReplicaPool, longest_first_batches

FP32_FILE = "model.onnx"
INT8_FILE = "model_qint8_avx2.onnx"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _pooling(model: Any) -> str:
    modes = [m for m in model if type(m).__name__ == "Pooling"]
    mode = modes[0].get_config_dict().get("pooling_mode", "mean") if modes else "mean"
    if mode not in ("mean", "cls"):
        raise TuningError(f"pooling '{mode}' is not supported by the ONNX backend; use the torch backend for this model")
    return mode


def export_onnx(model: str | None = None, int8: bool = False, cache_dir: str | Path | None = None) -> Path:
    """The model's transformer as an ONNX file (exported once, then reused), int8-quantised if asked.

    Args:
        model: the model directory, or None for the bundled default.
        int8: the int8-quantised file (made from the fp32 one).
        cache_dir: the cache folder (None: `$LANCEDB_TUNE_CACHE` or `~/.cache/llama-index-lancedb-tuning`);
            exports go to its `onnx` folder, which keeps the most recently used (`onnx_cache`).
    """
    name = resolve_model(model)
    if not Path(name).is_dir():
        raise TuningError(f"the ONNX backend needs a local model directory, got '{model}'; save or download the model first")
    out = onnx_cache.export_dir(Path(name), cache_dir)
    onnx_cache.claim(out)
    try:
        return _export(name, out, int8)
    except OSError as exc:
        raise TuningError(
            f"cannot write the ONNX export to {out} ({exc.strerror or exc}); {onnx_cache.clear_hint(out.parent)}"
        ) from None


def _export(name: str, out: Path, int8: bool) -> Path:
    fp32, int8_path = out / FP32_FILE, out / INT8_FILE
    # Named per process: two processes exporting one model at once each finish their own file.
    unique = f"{os.getpid()}.tmp"
    if not fp32.exists():
        import torch
        from sentence_transformers import SentenceTransformer

        with transformers_bars_off():
            st = SentenceTransformer(name, device="cpu")
        transformer: Any = st[0].auto_model  # typed loosely by sentence-transformers
        transformer.eval()

        class Encoder(torch.nn.Module):  # keyword call: transformers 5 reordered the positional arguments
            def __init__(self) -> None:
                super().__init__()
                self.transformer = transformer

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.transformer(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state

        sample = st.tokenizer(["an export sample", "a second, longer export sample"], padding=True, return_tensors="pt")
        if "token_type_ids" not in sample:
            sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
        tmp = out / f"{FP32_FILE}.{unique}"
        axes = {"batch": 0, "tokens": 1}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about shape arithmetic that dynamic axes cover
            torch.onnx.export(
                Encoder(),
                tuple(sample[k] for k in _INPUTS),
                str(tmp),
                input_names=list(_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={k: {v: n for n, v in axes.items()} for k in (*_INPUTS, "last_hidden_state")},
                opset_version=17,
                dynamo=False,
            )
        (out / "pooling.json").write_text(json.dumps({"pooling": _pooling(st), "max_seq_length": st.max_seq_length}))
        tmp.replace(fp32)  # only a finished export is ever reused
    if int8 and not int8_path.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = out / f"{INT8_FILE}.{unique}"
        notes = _QuantizerNotes()
        logging.getLogger().addFilter(notes)
        try:
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.getLogger().removeFilter(notes)
        tmp.replace(int8_path)
    return int8_path if int8 else fp32


class _QuantizerNotes(logging.Filter):
    """ONNX Runtime's quantizer logs on the root logger: a line of INFO per tensor it skips (about
    40 for a MiniLM) and a WARNING advising pre-processing, which is for static quantisation."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING or (
            record.levelno == logging.WARNING and "pre-processing before quantization" not in record.getMessage()
        )


class OnnxEmbedding(BaseEmbedding):
    """Embeds with ONNX Runtime on the CPU: the same vectors as sentence-transformers in fp32
    (to about 1e-6), or int8 weights for faster encoding at a measured cost (BENCHMARKS.md)."""

    model_name: str = Field(description="Model directory (or the bundled default's name).")
    int8: bool = Field(default=False, description="Use int8-quantised weights.")
    max_length: int = Field(default=256, description="Tokens kept per text.")
    pooling: str = Field(default="mean", description="mean or cls.")
    _session: Any = PrivateAttr()
    _tokenizer: Any = PrivateAttr()
    _cache_dir: str | Path | None = PrivateAttr()
    _replicas: ReplicaPool = PrivateAttr(default_factory=ReplicaPool)

    def __init__(
        self,
        model_name: str | None = None,
        int8: bool = False,
        embed_batch_size: int = 16,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise TuningError("the ONNX backend needs ONNX Runtime: pip install onnxruntime onnx") from None
        from transformers import AutoTokenizer

        path = export_onnx(model_name, int8, cache_dir)
        settings = json.loads((path.parent / "pooling.json").read_text())
        fields: dict[str, Any] = {"int8": int8, "max_length": settings["max_seq_length"], "pooling": settings["pooling"]}
        super().__init__(model_name=resolve_model(model_name), embed_batch_size=embed_batch_size, **fields, **kwargs)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        self._cache_dir = cache_dir

    @classmethod
    def class_name(cls) -> str:
        return "OnnxEmbedding"

    @property
    def tokenizer(self) -> Any:
        """The model's own tokenizer (what documents are chunked with)."""
        return self._tokenizer

    @property
    def replica_pool(self) -> ReplicaPool:
        """The parallel copies `embed_texts` keeps for this encoder."""
        return self._replicas

    def replica(self, threads: int) -> OnnxEmbedding:
        """The same encoder with its own session (at `threads` threads) and tokenizer, for a parallel worker."""
        return OnnxEmbedding(self.model_name, self.int8, self.embed_batch_size, self._cache_dir, threads)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Normalised float32 vectors, each independent of the other texts.

        fp32 runs longest-first batches, so each pads little. int8 runs one text at a time: dynamic
        quantisation scales each activation tensor by its range over the whole batch, padding
        included, so a batched text's vector would depend on its batch mates (cosine to the same
        text alone down to 0.98 on data_qa) and a query served alone would not meet the vector it
        was evaluated with. Alone is as fast for nodes (no padding) and slower only for short queries.
        """
        if not texts:
            return np.zeros((0, 0), np.float32)
        vectors: list[np.ndarray] = [np.empty(0)] * len(texts)
        for batch, feed in self._runs(texts):
            feed.setdefault("token_type_ids", np.zeros_like(feed["input_ids"]))
            hidden = self._session.run(None, feed)[0]
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = feed["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clip(min=1e-9)
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True).clip(min=1e-12)
            for i, v in zip(batch, pooled):
                vectors[i] = v
        return np.stack(vectors).astype(np.float32)

    def _runs(self, texts: list[str]) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """(positions, model inputs) of each session run: int8 one text per run, all tokenized in one
        call (44 queries: 4 ms against 9 ms for a call each), fp32 longest-first batches."""
        if self.int8:
            tokens = self._tokenizer(texts, truncation=True, max_length=self.max_length)
            for i in range(len(texts)):
                yield [i], {k: np.asarray([tokens[k][i]], dtype=np.int64) for k in _INPUTS if k in tokens}
            return
        for batch in longest_first_batches(texts, self.embed_batch_size):
            enc = self._tokenizer(
                [texts[i] for i in batch], padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
            )
            yield list(batch), {k: enc[k].astype(np.int64) for k in _INPUTS if k in enc}

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.encode([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.encode([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self.encode(list(texts)).tolist()
