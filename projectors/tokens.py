"""How the read side counts tokens: with a real tokenizer that ships in a
package, never downloaded.

The tokenizer is the Llama 2 BPE tokenizer (32k vocabulary) packaged inside
the ``wordllama`` wheel, the offline embedding provider's own: it is exact
for Llama-2-family models, and for ordinary English text it splits into at
least as many tokens as the larger vocabularies of current models (GPT-4's
cl100k, Llama 3's 128k), so a budget counted with it is a conservative one
for them; allow a margin for other tokenizers and for code or other
languages. ``rolebus.projectors.context`` adds the chat template's
per-message overhead on top.

Invariant: loading reads one packaged file (about 50 ms, once per process)
and never touches the network.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from tokenizers import Tokenizer

from rolebus.errors import ConfigError

PACKAGE = "wordllama"
TOKENIZER_FILE = "tokenizers/l2_supercat_tokenizer_config.json"


@cache
def tokenizer() -> Tokenizer:
    """The packaged tokenizer, loaded once."""
    try:
        path = resources.files(PACKAGE).joinpath(TOKENIZER_FILE)
        with resources.as_file(path) as file:
            return Tokenizer.from_file(str(file))
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        raise ConfigError(
            f"token counting: {PACKAGE}/{TOKENIZER_FILE} not found ({exc}); "
            f"reinstall rolebus so that its dependency {PACKAGE!r} is installed"
        ) from exc


def count_tokens(text: str) -> int:
    """Tokens of ``text`` (no special tokens added)."""
    return len(tokenizer().encode(text, add_special_tokens=False).ids)
