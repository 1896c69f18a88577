"""`AdaptedEmbedding`: any LlamaIndex embedding (OpenAI, Cohere, HuggingFace...) with a small trained
map on its query vectors, and the adapter folder that holds the map.

Documents keep the vectors the app's embedding makes, so a table's stored vectors stay valid and
nothing is re-embedded; only a query's vector goes through the map before it searches them. The
map starts as the identity (`QueryAdapter`), so an untrained adapter retrieves what its base does.

An adapter folder holds `adapter.safetensors` (the weights), `adapter.json` (the map's shape and
a description of the base embedding it was trained on), the training queries' vectors and the
trainer's `metrics.json`. From the description `from_table` makes the base
again with no model argument. The description never holds a secret: settings whose name speaks
of a key, token, secret, password, credential, auth or header are left out, so the rebuilt
embedding reads them where its class reads them by default (`OPENAI_API_KEY` for OpenAI), or the
app passes its own embedding instead (`AdaptedEmbedding.load(folder, base)`).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from torch import Tensor, nn

from ..common.jsonfile import read_json, write_json
from ..common.redaction import redact
from ..config import AdapterKind, Backend
from ..errors import TuningError
from .embed_models import backend_of, embed_queries, embed_texts, encoder_name, load_embed_model

ADAPTER_CONFIG = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
# The training queries' vectors by the base embedding (`training.adapter.cached_query_vectors`): all an
# adapter folder holds before its training finished, which a new tuning into it reuses.
QUERY_VECTORS, QUERY_TEXTS = "query_vectors.npy", "query_vectors.json"
CACHE_FILES = (QUERY_VECTORS, QUERY_TEXTS)
# A setting named like this may hold a credential: never written beside the adapter.
_SECRET_SETTING = re.compile(r"key|token|secret|password|credential|auth|header", re.IGNORECASE)
# Only LlamaIndex's own embedding classes are imported back from a description.
_REBUILDABLE_PACKAGES = ("llama_index.",)


class QueryAdapter(nn.Module):
    """A map of query vectors that starts as the identity, its outputs normalised.

    `linear`: `W x + b`, with `W = I`, `b = 0` at the start. `mlp`: `x + W2 gelu(W1 x + b1) + b2`,
    a residual layer whose output layer starts at zero, so it adds nothing until it learns.

    Args:
        dim: the embedding's dimension.
        kind: `linear` or `mlp`.
        hidden: the hidden width of `mlp` (None: `dim`).
    """

    def __init__(self, dim: int, kind: AdapterKind = "mlp", hidden: int | None = None) -> None:
        super().__init__()
        self.dim, self.kind = dim, kind
        self.hidden = hidden or dim
        if kind == "linear":
            self.linear = nn.Linear(dim, dim)
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(dim))
                self.linear.bias.zero_()
        elif kind == "mlp":
            self.up, self.down = nn.Linear(dim, self.hidden), nn.Linear(self.hidden, dim)
            with torch.no_grad():
                self.down.weight.zero_()
                self.down.bias.zero_()
        else:
            raise TuningError(f"unknown adapter '{kind}'; use linear or mlp")

    def forward(self, vectors: Tensor) -> Tensor:
        vectors = nn.functional.normalize(vectors, dim=-1)  # trained on unit vectors, whatever scale a base returns
        if self.kind == "linear":
            out = self.linear(vectors)
        else:
            out = vectors + self.down(nn.functional.gelu(self.up(vectors)))
        return nn.functional.normalize(out, dim=-1)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "kind": self.kind, "hidden": self.hidden}

    @torch.no_grad()
    def adapt(self, vectors: np.ndarray) -> np.ndarray:
        """(n, dim) float32 query vectors through the map."""
        return self(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))).numpy()


def is_adapter_dir(name: str) -> bool:
    """Whether `name` is a folder `save_adapter` wrote (rather than a model path or hub id)."""
    return (Path(name).expanduser() / ADAPTER_CONFIG).is_file()


def describe_embedding(model: BaseEmbedding) -> dict[str, Any]:
    """What makes `model` again: its class, and either the name `load_embed_model` loads or its
    settings, secrets left out (see the module's docstring)."""
    cls = type(model)
    description: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}", "model_name": encoder_name(model)}
    if backend_of(model) is not None:  # a model `load_embed_model` makes, in the table's runtime
        description["load"] = encoder_name(model)
        return description
    settings = {}
    for name, value in model.to_dict().items():
        if name == "class_name" or _SECRET_SETTING.search(name):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue  # a client or a cache object: the class makes its own
        settings[name] = value
    description["settings"] = settings
    return description


def _rebuild_failed(description: dict[str, Any], why: str) -> TuningError:
    short = description["class"].rpartition(".")[2]
    return TuningError(
        f"cannot rebuild the adapter's base embedding {short} ({why}; keys are never recorded): set its key where its "
        f"class reads it (e.g. the environment), or pass the app's embedding: from_table(embed_model={short}(...))"
    )


def _brief(exc: Exception) -> str:
    """`exc` in a few words, one line, any key in it redacted."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return redact(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)[:160]


def rebuild_embedding(description: dict[str, Any], backend: Backend = "auto") -> BaseEmbedding:
    """The embedding `describe_embedding` described; its secrets come from where its class reads them."""
    if description.get("load"):
        return load_embed_model(description["load"], backend=backend)
    module_name, _, class_name = description["class"].rpartition(".")
    if not module_name.startswith(_REBUILDABLE_PACKAGES):
        raise _rebuild_failed(description, "not a LlamaIndex class")
    try:
        model = getattr(importlib.import_module(module_name), class_name)(**description.get("settings", {}))
    except Exception as exc:  # a missing package or key: any error of the class's own
        raise _rebuild_failed(description, _brief(exc)) from None
    if not isinstance(model, BaseEmbedding):
        raise _rebuild_failed(description, "not a LlamaIndex embedding")
    return model


def save_adapter(adapter: QueryAdapter, folder: Path, base: BaseEmbedding, extra: dict[str, Any] | None = None) -> None:
    """Write the adapter's weights and `adapter.json` (its shape, its base's description, `extra`) into `folder`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in adapter.state_dict().items()}, str(folder / ADAPTER_WEIGHTS))
    write_json(folder / ADAPTER_CONFIG, {**adapter.config(), "base": describe_embedding(base), **(extra or {})}, indent=2)


def load_adapter(folder: str | Path) -> tuple[QueryAdapter, dict[str, Any]]:
    """The adapter `save_adapter` wrote into `folder`, and its `adapter.json`."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    config = read_json(folder / ADAPTER_CONFIG)
    if config is None or not (folder / ADAPTER_WEIGHTS).is_file():
        raise TuningError(f"{folder} holds no finished adapter ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}); train it again")
    adapter = QueryAdapter(config["dim"], config["kind"], config["hidden"])
    adapter.load_state_dict(load_file(str(folder / ADAPTER_WEIGHTS)))
    return adapter.eval(), config


def adapts(folder: str, model: BaseEmbedding) -> bool:
    """Whether `folder` holds an adapter trained on `model`'s query vectors: a model of the name it
    describes (of its class too, for an embedding `load_embed_model` does not make)."""
    config = read_json(Path(folder).expanduser() / ADAPTER_CONFIG) if is_adapter_dir(folder) else None
    if config is None or config["base"]["model_name"] != encoder_name(model):
        return False
    return bool(config["base"].get("load")) or config["base"]["class"].rpartition(".")[2] == type(model).__qualname__


class AdaptedEmbedding(BaseEmbedding):
    """The app's embedding with a trained map on its query vectors; documents embed as the base embeds them.

    Args:
        base: the app's embedding (the model the table's vectors were made with).
        adapter: the trained map.
        adapter_dir: the adapter folder (its absolute path is this embedding's `model_name`, the
            name a table records for its query encoder).
    """

    base: BaseEmbedding = Field(description="The app's embedding: documents as it embeds them, queries before the map.")
    adapter_dir: str = Field(description="The folder of the adapter's weights and adapter.json.")
    _adapter: QueryAdapter = PrivateAttr()

    def __init__(self, base: BaseEmbedding, adapter: QueryAdapter, adapter_dir: str | Path, **kwargs: Any) -> None:
        folder = str(Path(adapter_dir).expanduser().resolve())
        kwargs.setdefault("model_name", folder)
        kwargs.setdefault("embed_batch_size", base.embed_batch_size)
        super().__init__(base=base, adapter_dir=folder, **kwargs)  # type: ignore[call-arg]
        self._adapter = adapter

    @classmethod
    def load(cls, adapter_dir: str | Path, base: BaseEmbedding | None = None, backend: Backend = "auto") -> AdaptedEmbedding:
        """The adapter in `adapter_dir` over `base` (None: the base its `adapter.json` describes, made again).

        Raises:
            TuningError: the folder holds no adapter, the base cannot be made again, or `base` makes
                vectors of another dimension than the adapter maps.
        """
        adapter, config = load_adapter(adapter_dir)
        model = rebuild_embedding(config["base"], backend) if base is None else base
        try:
            dim = len(embed_queries(model, ["dimension check"])[0])
        except Exception as exc:  # a rebuilt API embedding meets its missing key only here
            if base is not None:
                raise
            raise _rebuild_failed(config["base"], _brief(exc)) from None
        if dim != adapter.dim:
            raise TuningError(
                f"the adapter in {adapter_dir} maps {adapter.dim}-dim query vectors but the embedding makes {dim}-dim ones; "
                "pass the embedding it was trained on"
            )
        return cls(model, adapter, adapter_dir)

    @property
    def adapter(self) -> QueryAdapter:
        return self._adapter

    @classmethod
    def class_name(cls) -> str:
        return "AdaptedEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        # The base's vector as the retrievers and the trainer embed queries, so training meets serving.
        return self._adapter.adapt(embed_queries(self.base, [query]))[0].tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        vector = await self.base.aget_query_embedding(query)
        return self._adapter.adapt(np.asarray([vector], dtype=np.float32))[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        vectors: np.ndarray = embed_texts(self.base, texts)
        return vectors.tolist()
