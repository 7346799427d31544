"""Embedding providers: text -> unit vectors for the context store's recall.

``load_provider(settings)`` builds the provider named by ``ROLEBUS_EMBEDDINGS``:

- ``wordllama`` (default): the WordLlama ``l2_supercat`` 256-dim model whose
  weights and tokenizer ship inside the ``wordllama`` wheel. Loaded from the
  package folder with downloads disabled: it never touches the network.
- ``sentence-transformers:<model name or path>``: the optional extra
  ``rolebus[sentence-transformers]`` (torch); imported only when configured.
  Hugging Face's own ``HF_HUB_OFFLINE=1`` keeps it off the network.
- ``openai:<base url>``: any OpenAI-compatible ``POST <base>/embeddings``
  (OpenAI, Ollama, vLLM), see ``rolebus.projectors.embeddings_http``.

Invariants: ``embed`` returns a float32 array of shape ``(len(texts), dim)``
whose rows have unit L2 norm (cosine distance = 1 - dot), except a text with
nothing to embed (e.g. empty), whose row is all zeros; ``dim`` is known right
after ``load_provider`` (``migrate`` needs it before any text is embedded);
failures raise ``EmbeddingError`` with a ``retriable`` flag. CPU-bound models
run in a worker thread so the event loop keeps serving (WordLlama embeds a
short query inline: the thread hop would cost ten times the work).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np
import numpy.typing as npt

from rolebus.config import Settings
from rolebus.errors import ConfigError, EmbeddingError

Vectors = npt.NDArray[np.float32]

WORDLLAMA_CONFIG = "l2_supercat"
WORDLLAMA_DIM = 256
# WordLlama mean-pools token vectors; the first tokens of a long message carry
# its topic, and an unbounded pad length would cost batch * tokens * dim floats.
WORDLLAMA_MAX_TOKENS = 512
# Up to this many characters WordLlama embeds inline: measured 0.05 ms for one
# query text vs 0.6 ms for a hop to a worker thread; bigger batches (projector)
# go to a thread so the event loop keeps serving (512 texts: ~40 ms).
INLINE_CHARS = 2_000


class EmbeddingProvider(Protocol):
    """What the projector and the queries need from a provider."""

    name: str
    """Model identity recorded in the store (``store_meta.embedding_model``)."""
    dim: int
    """Vector size; the store's ``messages.embedding`` is ``vector(dim)``."""

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit vectors, one row per text, in order."""
        ...

    async def aclose(self) -> None:
        """Release connections or threads; the provider is unusable after."""
        ...


def normalize(matrix: npt.ArrayLike) -> Vectors:
    """Rows scaled to unit L2 norm, as float32; all-zero rows stay zero."""
    out = np.asarray(matrix, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    unit: Vectors = np.zeros_like(out)
    np.divide(out, norms, out=unit, where=norms > 0)
    return unit


def load_provider(settings: Settings) -> EmbeddingProvider:
    """The provider ``settings.embeddings`` names, loaded and ready to embed.

    Blocking: it reads model files, and for ``openai:`` without
    ``ROLEBUS_EMBEDDINGS_DIM`` it sends one probe request (up to
    ``ROLEBUS_EMBEDDINGS_TIMEOUT_S``); call it at start-up or in a thread."""
    kind, _, arg = settings.embeddings.partition(":")
    provider: EmbeddingProvider
    if kind == "wordllama":
        provider = WordLlamaProvider.load(settings.embeddings_batch)
    elif kind == "sentence-transformers":
        provider = SentenceTransformersProvider.load(arg, settings.embeddings_batch)
    elif kind == "openai":
        from rolebus.projectors.embeddings_http import OpenAIProvider

        provider = OpenAIProvider.load(arg, settings)
    else:
        raise ConfigError(f"ROLEBUS_EMBEDDINGS: unknown provider {settings.embeddings!r}")
    if settings.embeddings_dim is not None and settings.embeddings_dim != provider.dim:
        raise ConfigError(
            f"ROLEBUS_EMBEDDINGS_DIM: set to {settings.embeddings_dim} but provider "
            f"{provider.name!r} makes {provider.dim}-dim vectors (unset it or fix the model)"
        )
    return provider


def _import_quietly(module: str) -> ModuleType:
    """Import ``module`` keeping the root logger as it was: wordllama calls
    ``logging.basicConfig(level=INFO)`` at import, which would make every
    library's INFO lines appear on our stderr."""
    import importlib

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return importlib.import_module(module)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


class WordLlamaProvider:
    """The offline default: static token vectors, mean-pooled; no torch."""

    def __init__(self, model: object, batch: int) -> None:
        self._model = model
        self._batch = batch
        self.name = f"wordllama:{WORDLLAMA_CONFIG}_{WORDLLAMA_DIM}"
        self.dim = WORDLLAMA_DIM

    @classmethod
    def load(cls, batch: int = 64) -> WordLlamaProvider:
        wordllama = _import_quietly("wordllama")
        # WordLlama.load finds the weights in the package but looks for the
        # tokenizer under <cache_dir>/tokenizers/: the package folder has that
        # layout, so it is the cache dir, and downloads stay disabled.
        package_dir = Path(str(resources.files("wordllama")))
        try:
            model = wordllama.WordLlama.load(
                WORDLLAMA_CONFIG,
                cache_dir=package_dir,
                dim=WORDLLAMA_DIM,
                disable_download=True,
            )
        except (OSError, ValueError) as exc:
            raise EmbeddingError(
                f"ROLEBUS_EMBEDDINGS=wordllama: the packaged model did not load from "
                f"{package_dir} ({exc}); reinstall the wordllama package"
            ) from exc
        model.tokenizer.enable_truncation(WORDLLAMA_MAX_TOKENS)
        return cls(model, batch)

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """The blocking call (for benchmarks and threads)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        raw = self._model.embed(list(texts), norm=False, batch_size=self._batch)  # type: ignore[attr-defined]
        return normalize(raw)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if sum(len(text) for text in texts) <= INLINE_CHARS:
            return self.embed_sync(texts)
        return await asyncio.to_thread(self.embed_sync, texts)

    async def aclose(self) -> None:
        return None


class SentenceTransformersProvider:
    """A sentence-transformers model (optional extra; torch)."""

    def __init__(self, model: object, name: str, dim: int, batch: int) -> None:
        self._model = model
        self._batch = batch
        self.name = f"sentence-transformers:{name}"
        self.dim = dim

    @classmethod
    def load(cls, model_name: str, batch: int = 64) -> SentenceTransformersProvider:
        setting = f"ROLEBUS_EMBEDDINGS=sentence-transformers:{model_name}"
        try:
            module = _import_quietly("sentence_transformers")
        except ImportError as exc:
            raise EmbeddingError(
                f"{setting}: the optional extra is not installed "
                "(pip install 'rolebus[sentence-transformers]')"
            ) from exc
        try:
            model = module.SentenceTransformer(model_name)
        except Exception as exc:  # the library raises OSError, ValueError, HF errors...
            raise EmbeddingError(
                f"{setting}: the model did not load ({exc}); give a local folder or a model "
                "already in the Hugging Face cache (downloads need network access)"
            ) from exc
        size = getattr(model, "get_sentence_embedding_dimension", None)
        dim = size() if size is not None else None
        if not isinstance(dim, int) or dim < 1:
            raise EmbeddingError(f"{setting}: the model does not report its vector size")
        return cls(model, model_name, dim, batch)

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        raw = self._model.encode(  # type: ignore[attr-defined]
            list(texts), batch_size=self._batch, convert_to_numpy=True, show_progress_bar=False
        )
        return normalize(raw)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        try:
            return await asyncio.to_thread(self.embed_sync, texts)
        except RuntimeError as exc:  # torch reports out-of-memory and device errors so
            raise EmbeddingError(f"{self.name}: embedding failed ({exc})", retriable=True) from exc

    async def aclose(self) -> None:
        return None
