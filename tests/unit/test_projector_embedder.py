"""The projector's embedding step: retried, then recorded as an error, never lost."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from rolebus.errors import EmbeddingError
from rolebus.projectors.embedder import embed_contents


class Flaky:
    """A provider that fails ``failures`` times, then embeds (length, 1, 0...)."""

    name = "flaky"
    dim = 3

    def __init__(self, failures: int, shape: tuple[int, int] | None = None) -> None:
        self.failures = failures
        self.calls = 0
        self.shape = shape

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        if self.calls <= self.failures:
            raise EmbeddingError("endpoint down", retriable=True)
        out = np.zeros(self.shape or (len(texts), self.dim), dtype=np.float32)
        out[:, 0] = [len(t) for t in texts][: out.shape[0]]
        return out

    async def aclose(self) -> None:
        return None


async def test_a_failing_provider_is_retried() -> None:
    provider = Flaky(failures=2)
    done = await embed_contents(provider, ["ab", "abc"], delays=(0, 0, 0))
    assert provider.calls == 3 and done.errors == [None, None]
    assert [v[0] for v in done.vectors if v is not None] == [2.0, 3.0]


async def test_after_the_retries_every_text_gets_the_error_and_no_vector() -> None:
    provider = Flaky(failures=10)
    done = await embed_contents(provider, ["a", "b"], delays=(0, 0))
    assert provider.calls == 3
    assert done.vectors == [None, None]
    assert all(e is not None and "endpoint down" in e for e in done.errors)


async def test_a_wrong_shape_is_an_error_not_a_vector() -> None:
    done = await embed_contents(Flaky(0, shape=(1, 3)), ["a", "b"], delays=())
    assert done.vectors == [None, None] and "shape (1, 3)" in str(done.errors[0])


async def test_nothing_to_embed_calls_nothing() -> None:
    provider = Flaky(0)
    assert (await embed_contents(provider, [])).vectors == [] and provider.calls == 0
