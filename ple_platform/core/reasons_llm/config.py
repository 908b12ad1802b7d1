"""Configuration of the L2 rewrite and the LLM judge, from the environment (never from code), and the SDK client.

| variable | meaning | default |
|---|---|---|
| ``ANTHROPIC_API_KEY`` (or ``PLE_LLM_API_KEY``) | API key; unset = no L2 rewrite, the gate runs its rules only | unset |
| ``PLE_LLM_BASE_URL`` (or ``ANTHROPIC_BASE_URL``) | Messages API base URL (a gateway, or the test stand-in) | SDK default |
| ``PLE_LLM_MODEL`` | model id; ids age out, so it is configuration | ``DEFAULT_MODEL`` |
| ``PLE_LLM_TIMEOUT_S`` | per-request timeout, seconds | 5 |
| ``PLE_LLM_MAX_RETRIES`` | SDK retries on 429/5xx | 0 (the L1 fallback is the retry) |
| ``PLE_LLM_PROMPT_VERSION`` | key of ``PROMPTS`` (part of the cache key) | ``DEFAULT_PROMPT_VERSION`` |
| ``PLE_LLM_STREAM`` | ``1`` = stream the reply (SSE) | 0 |
| ``PLE_LLM_JUDGE_VOTES`` | LLM-judge votes after the rules pass (0 = none, 3 = the consensus judge) | 0 |
| ``PLE_LLM_CACHE`` | DuckDB file of the rewrite cache | unset (in process only) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# A model the pinned SDK lists and does not mark deprecated (a test checks); fast and small: rewrites are short.
DEFAULT_MODEL = "claude-haiku-5-5"
DEFAULT_PROMPT_VERSION = "reasons-v1"

# System prompts by version. A new wording gets a new version, so cached rewrites of the old one are not reused.
PROMPTS: dict[str, str] = {
    "reasons-v1": (
        "You rewrite a bank's product-recommendation reason so that it reads naturally for the customer. "
        "Input: the language, the recommended product, the reason text and the facts it is based on. "
        "Rules: write in the requested language only; in Korean use the polite formal register (…니다/…요) and "
        "address the customer as 고객님. Keep every number exactly as written in the reason and add no other "
        "number. Keep every fact and its polarity (holds / does not hold). Name no product other than those in "
        "the reason. Never promise returns, principal protection or absence of risk; no urgency, no superlatives, "
        "no names, contact data or personal attributes. One short paragraph of plain text, no markup, no "
        "preamble, no quotes, at most 1.5 times the length of the reason. Reply with the rewritten reason only."
    ),
}
JUDGE_PROMPT = (
    "You review one customer-facing reason for a bank product recommendation against its source facts. "
    "FAIL it if it promises returns or principal protection, pressures the customer, uses superlatives, states "
    "anything not supported by the facts, contains personal data or personal attributes, names another product, "
    "is rude, or is not in the requested language. Answer with PASS or FAIL on the first line, then one short "
    "line saying why."
)


class LLMConfigError(ValueError):
    """A malformed LLM setting; the message names the variable."""


@dataclass(frozen=True)
class LLMConfig:
    api_key: str | None = field(default=None, repr=False)  # never printed or logged
    base_url: str | None = None
    model: str = DEFAULT_MODEL
    timeout_s: float = 5.0
    max_retries: int = 0
    prompt_version: str = DEFAULT_PROMPT_VERSION
    max_tokens: int = 400
    stream: bool = False
    judge_votes: int = 0
    cache_path: Path | None = None

    def __post_init__(self) -> None:
        if self.prompt_version not in PROMPTS:
            raise LLMConfigError(f"PLE_LLM_PROMPT_VERSION={self.prompt_version!r}: known versions {sorted(PROMPTS)}")
        if not self.model:
            raise LLMConfigError("PLE_LLM_MODEL is empty: set a model id")
        if not 0 < self.timeout_s <= 120:
            raise LLMConfigError(f"PLE_LLM_TIMEOUT_S={self.timeout_s}: expected seconds in (0, 120]")
        if self.judge_votes not in (0, 1, 3, 5):
            raise LLMConfigError(f"PLE_LLM_JUDGE_VOTES={self.judge_votes}: expected 0, 1, 3 or 5")
        if self.max_retries < 0:
            raise LLMConfigError(f"PLE_LLM_MAX_RETRIES={self.max_retries}: expected >= 0")

    @property
    def has_key(self) -> bool:
        return bool(self.api_key)

    @property
    def system_prompt(self) -> str:
        return PROMPTS[self.prompt_version]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "LLMConfig":
        e = os.environ if environ is None else environ

        def number(name: str, default: str, kind: type) -> float | int:
            raw = e.get(name, default)
            try:
                return kind(raw)
            except ValueError:
                raise LLMConfigError(f"{name}={raw!r}: expected a {kind.__name__}") from None

        cache = e.get("PLE_LLM_CACHE")
        return cls(
            api_key=e.get("ANTHROPIC_API_KEY") or e.get("PLE_LLM_API_KEY") or None,
            base_url=e.get("PLE_LLM_BASE_URL") or e.get("ANTHROPIC_BASE_URL") or None,
            model=e.get("PLE_LLM_MODEL", DEFAULT_MODEL),
            timeout_s=float(number("PLE_LLM_TIMEOUT_S", "5", float)),
            max_retries=int(number("PLE_LLM_MAX_RETRIES", "0", int)),
            prompt_version=e.get("PLE_LLM_PROMPT_VERSION", DEFAULT_PROMPT_VERSION),
            stream=e.get("PLE_LLM_STREAM", "0") in ("1", "true", "yes"),
            judge_votes=int(number("PLE_LLM_JUDGE_VOTES", "0", int)),
            cache_path=Path(cache) if cache else None,
        )


def make_client(config: LLMConfig):  # -> anthropic.Anthropic
    """The SDK client for ``config`` (imported here so that modules using only the rules never load the SDK)."""
    import anthropic

    if not config.has_key:
        raise LLMConfigError("no API key: set ANTHROPIC_API_KEY (or PLE_LLM_API_KEY) to enable LLM calls")
    return anthropic.Anthropic(api_key=config.api_key, base_url=config.base_url, timeout=config.timeout_s,
                               max_retries=config.max_retries)


@dataclass(frozen=True)
class Reply:
    text: str
    stop_reason: str | None


def ask(client, config: LLMConfig, system: str, user: str) -> Reply:
    """One Messages API call (streamed when ``config.stream``); the SDK's exceptions propagate (see
    ``failure_reason``). SDK 2.12's ``messages.create`` takes no ``temperature``: the model's default applies."""
    kwargs = dict(model=config.model, max_tokens=config.max_tokens, system=system,
                  messages=[{"role": "user", "content": user}])
    if config.stream:
        with client.messages.stream(**kwargs) as stream:
            message = stream.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    text = "".join(block.text for block in message.content if getattr(block, "type", "") == "text")
    return Reply(text.strip(), message.stop_reason)


def failure_reason(exc: BaseException) -> str:
    """A short, stable reason for an LLM call that raised, for the fallback record and the audit log."""
    import anthropic

    if isinstance(exc, anthropic.APITimeoutError):
        return "timeout"
    if isinstance(exc, anthropic.OverloadedError):
        return "overloaded"
    if isinstance(exc, anthropic.RateLimitError):
        return "rate_limited"
    if isinstance(exc, anthropic.APIStatusError):
        return f"api_error_{exc.status_code}"
    if isinstance(exc, anthropic.APIConnectionError):
        return "connection_error"
    return f"error_{type(exc).__name__}"
