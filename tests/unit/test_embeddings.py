"""Embedding providers without services: settings parsing, the packaged
WordLlama model (offline, never a connection), the HTTP answer parser."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rolebus.config import load_settings
from rolebus.errors import ConfigError, EmbeddingError
from rolebus.projectors.embeddings import (
    INLINE_CHARS,
    WordLlamaProvider,
    load_provider,
    normalize,
)
from rolebus.projectors.embeddings_http import endpoint_url, parse_answer
from rolebus.projectors.recall import multirange_literal, snapshot_live_ranges


def settings(**env: str):  # type: ignore[no-untyped-def]
    return load_settings(env={f"ROLEBUS_{k.upper()}": v for k, v in env.items()}, config_file=None)


def test_default_provider_is_wordllama() -> None:
    s = settings()
    assert s.embeddings == "wordllama"
    assert s.embeddings_batch == 64 and s.embeddings_dim is None


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("wordllama", "wordllama"),
        (" sentence-transformers:all-MiniLM-L6-v2 ", "sentence-transformers:all-MiniLM-L6-v2"),
        ("sentence-transformers:/models/mini", "sentence-transformers:/models/mini"),
        ("openai:http://127.0.0.1:11434/v1/", "openai:http://127.0.0.1:11434/v1"),
    ],
)
def test_provider_setting_forms(raw: str, parsed: str) -> None:
    assert settings(embeddings=raw, embeddings_model="m").embeddings == parsed


@pytest.mark.parametrize(
    "raw", ["", "bert", "sentence-transformers:", "openai:", "openai:ftp://x", "wordllama:x"]
)
def test_bad_provider_setting_names_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^ROLEBUS_EMBEDDINGS: must be wordllama"):
        settings(embeddings=raw)


def test_openai_needs_a_model_name() -> None:
    with pytest.raises(ConfigError, match="ROLEBUS_EMBEDDINGS_MODEL: required"):
        settings(embeddings="openai:http://127.0.0.1:1/v1")


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("embeddings_dim", "0", ">= 1"),
        ("embeddings_batch", "x", "integer"),
        ("embeddings_timeout_s", "-1", "> 0"),
    ],
)
def test_numeric_embedding_settings(name: str, value: str, rule: str) -> None:
    with pytest.raises(ConfigError, match=f"ROLEBUS_{name.upper()}: must .*{rule}"):
        settings(**{name: value})


def test_api_key_is_not_shown_in_repr() -> None:
    s = settings(embeddings_api_key="sk-secret")
    assert s.embeddings_api_key == "sk-secret" and "sk-secret" not in repr(s)


def test_a_dimension_that_disagrees_with_the_model_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ROLEBUS_EMBEDDINGS_DIM: set to 384 .* makes 256"):
        load_provider(settings(embeddings_dim="384"))


def test_sentence_transformers_without_the_extra_is_a_clear_error() -> None:
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(EmbeddingError, match=r"pip install 'rolebus\[sentence-transformers\]'"):
            load_provider(settings(embeddings="sentence-transformers:all-MiniLM-L6-v2"))
    else:
        pytest.skip("sentence-transformers is installed here")


async def test_wordllama_ranks_by_meaning() -> None:
    provider = load_provider(settings())
    assert (provider.name, provider.dim) == ("wordllama:l2_supercat_256", 256)
    docs = [
        "the weather is nice today",
        "my invoice for march is wrong",
        "how do I reset my password",
        "the dragon attacks the castle",
    ]
    vectors = await provider.embed(docs)
    query = await provider.embed(["billing problem with an invoice"])
    assert vectors.dtype == np.float32 and vectors.shape == (4, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert docs[int(np.argmax(vectors @ query[0]))] == "my invoice for march is wrong"
    assert (await provider.embed([])).shape == (0, 256)


def test_wordllama_empty_text_is_a_zero_row_and_long_text_is_bounded() -> None:
    provider = WordLlamaProvider.load()
    out = provider.embed_sync(["", "word " * 100_000])
    assert not out[0].any() and abs(float(np.linalg.norm(out[1])) - 1.0) < 1e-5


def test_wordllama_loads_without_any_network_access(tmp_path: Path) -> None:
    """A child process with an empty HOME (no cache), Hugging Face offline, an
    unreachable proxy and an audit hook that fails on any socket connect."""
    script = textwrap.dedent(
        """
        import sys
        def hook(event, args):
            if event in ("socket.connect", "socket.getaddrinfo"):
                raise RuntimeError(f"network use: {event} {args!r}")
        sys.addaudithook(hook)
        import socket
        try:  # the hook itself works
            socket.create_connection(("127.0.0.1", 9), timeout=1)
        except RuntimeError:
            pass
        else:
            raise SystemExit("audit hook did not fire")
        import asyncio
        from rolebus.config import load_settings
        from rolebus.projectors.embeddings import load_provider
        provider = load_provider(load_settings(env={}, config_file=None))
        print(asyncio.run(provider.embed(["hello there"])).shape)
        import logging  # wordllama's basicConfig at import was undone
        assert not logging.getLogger().handlers, logging.getLogger().handlers
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLEBUS_", "HF_"))}
    env.update(
        HOME=str(tmp_path),
        HF_HUB_OFFLINE="1",
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 256)"
    assert list(tmp_path.iterdir()) == []  # nothing cached or downloaded


def test_normalize_keeps_zero_rows() -> None:
    out = normalize([[3.0, 4.0], [0.0, 0.0]])
    assert out.dtype == np.float32
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_endpoint_url() -> None:
    assert endpoint_url("http://h:1/v1/") == "http://h:1/v1/embeddings"
    assert endpoint_url("http://h:1/v1/embeddings") == "http://h:1/v1/embeddings"


def test_answer_rows_follow_their_index() -> None:
    payload = {"data": [{"index": 1, "embedding": [0.0, 2.0]}, {"index": 0, "embedding": [1, 0]}]}
    assert parse_answer("u", payload, 2, 2).tolist() == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize(
    ("payload", "rule"),
    [
        ([1, 2], '"data" list'),
        ({"data": [{"embedding": [1.0]}]}, "1 embeddings for 2 inputs"),
        (
            {"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]},
            "repeated",
        ),
        ({"data": [{"embedding": "abc"}, {"embedding": [1.0]}]}, '"embedding" list'),
        ({"data": [{"embedding": [1.0]}, {"embedding": [1.0, 2.0]}]}, r"sizes \[1, 2\]"),
        ({"data": [{"embedding": ["a"]}, {"embedding": [1.0]}]}, "lists of numbers"),
    ],
)
def test_malformed_answers(payload: object, rule: str) -> None:
    with pytest.raises(EmbeddingError, match=f"endpoint u: malformed answer: .*{rule}") as info:
        parse_answer("u", payload, 2, None)
    assert info.value.retriable is False


def test_answer_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(EmbeddingError, match=r"sizes \[2\] \(expected 3\)"):
        parse_answer("u", {"data": [{"embedding": [1.0, 0.0]}]}, 1, 3)


def test_live_ranges_of_a_commit_snapshot() -> None:
    snapshot = {"seq": 9, "lineage": {"closed": [[1, 2], [4, 5]], "branch_start": 8}}
    assert snapshot_live_ranges(snapshot) == [(1, 2), (4, 5), (8, 9)]
    assert multirange_literal(snapshot_live_ranges(snapshot)) == "{[1,2],[4,5],[8,9]}"
    # An empty current branch adds no range.
    assert snapshot_live_ranges({"seq": 7, "lineage": {"closed": [], "branch_start": 8}}) == []


async def test_wordllama_inline_and_threaded_paths_agree() -> None:
    provider = WordLlamaProvider.load()
    short = ["my invoice for march is wrong"]
    long = [f"message {i} about refunds, parcels and dragons" for i in range(200)]
    assert sum(map(len, long)) > INLINE_CHARS >= sum(map(len, short))
    for texts in (short, long):
        assert np.array_equal(await provider.embed(texts), provider.embed_sync(texts))
