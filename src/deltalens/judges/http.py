"""An LLM judge behind any OpenAI-compatible ``/chat/completions`` endpoint.

Configuration (arguments, else environment):

* ``base_url`` — ``$DELTALENS_JUDGE_BASE_URL``, default ``https://api.openai.com/v1``;
* ``model`` — ``$DELTALENS_JUDGE_MODEL``, default ``gpt-4.1-mini``;
* the API key is read from the environment variable named by ``api_key_env``
  (default ``OPENAI_API_KEY``) and only from there. It is sent in the
  ``Authorization`` header and never stored in results, caches, logs or reprs.
  ``api_key_env=None`` sends no key (local servers that need none).

Scoring: the judge prompt (:mod:`deltalens.judges.base`) is sent with ``temperature 0``,
``max_tokens 3`` and ``logprobs`` / ``top_logprobs 20``. When log-probabilities come back,
the score is the probability-weighted mean over the integer tokens 0–100 among the top
candidates of the first answer token, ``Σ p(n)·n / Σ p(n)``, provided their total mass
``Σ p(n) ≥ 0.25`` (as persona-vector judges do). Otherwise the answer text is parsed:
``REFUSAL`` → status ``refusal``; the first integer in [0, 100] → that value; anything
else → ``unparseable``.

Transport: requests run concurrently (``concurrency`` threads) with a per-request
``timeout``. Timeouts, connection errors, HTTP 429 and 5xx are retried ``max_retries``
times with exponential backoff (``backoff · 2^k`` seconds); after that the item's score
has status ``error`` (not cached, so a re-run asks again) and the sweep continues.
HTTP 401/403 stops at once with :class:`JudgeAuthError` (a wrong key will not fix itself).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import ConfigError, DeltalensError
from .base import Judge, Score, TraitInfo, render_prompt

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4.1-mini"
MIN_NUMBER_MASS = 0.25


class JudgeAuthError(DeltalensError):
    """The judge endpoint rejected the API key (HTTP 401/403)."""


def score_from_logprobs(top: Sequence[dict[str, Any]]) -> float | None:
    """``Σ p(n)·n / Σ p(n)`` over integer tokens 0–100 of one position's top log-probs,
    or ``None`` when their total probability is below 0.25."""
    total = 0.0
    acc = 0.0
    for cand in top:
        tok = str(cand.get("token", "")).strip()
        if not tok.isdigit():
            continue
        n = int(tok)
        if 0 <= n <= 100:
            p = math.exp(float(cand.get("logprob", -math.inf)))
            total += p
            acc += p * n
    if total < MIN_NUMBER_MASS:
        return None
    return acc / total


_INT = re.compile(r"(?<![\d.])(\d{1,3})(?!\d|\.\d)")


def score_from_text(text: str) -> Score:
    """Parse a judge's answer text (see the module docstring)."""
    t = (text or "").strip()
    if "REFUSAL" in t.upper():
        return Score(None, "refusal", t[:200])
    for m in _INT.finditer(t):
        n = int(m.group(1))
        if 0 <= n <= 100:
            return Score(float(n), "ok", t[:200])
    return Score(None, "unparseable", t[:200])


class OpenAIJudge(Judge):
    """Judge through an OpenAI-compatible chat-completions endpoint (see module docstring)."""

    scores_relevance = True

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 8,
        logprobs: bool = True,
        max_tokens: int = 3,
    ):
        self.model = model or os.environ.get("DELTALENS_JUDGE_MODEL", DEFAULT_MODEL)
        self.base_url = (base_url or os.environ.get("DELTALENS_JUDGE_BASE_URL", DEFAULT_BASE_URL)).rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.concurrency = max(1, int(concurrency))
        self.logprobs = bool(logprobs)
        self.max_tokens = int(max_tokens)
        self.id = f"openai:{self.base_url}:{self.model}:lp{int(self.logprobs)}"
        self.requests = 0  # HTTP requests made (including retries), for tests and logs

    def __repr__(self) -> str:  # never shows the key
        return (
            f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"
        )

    def _key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ConfigError(
                f"the judge at {self.base_url} needs an API key in the environment variable {self.api_key_env}, "
                f"which is not set (export {self.api_key_env}=...; use --judge offline to score without an API)"
            )
        return key

    def check(self) -> None:
        self._key()

    def _post(self, body: dict[str, Any]) -> dict[str, Any] | Score:
        """POST ``body`` to ``/chat/completions`` with the retries of the module docstring: the
        decoded JSON payload, or a :class:`Score` with status ``error``/``unparseable``."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.requests += 1
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    raise JudgeAuthError(
                        f"the judge at {url} rejected the API key from {self.api_key_env} (HTTP {exc.code})"
                    ) from None
                last = f"HTTP {exc.code}"
                if exc.code != 429 and exc.code < 500:
                    return Score(None, "error", f"{last}: {_short(exc)}")
            except TimeoutError:
                last = f"timeout after {self.timeout:g} s"
            except urllib.error.URLError as exc:
                last = f"connection error ({exc.reason})"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                return Score(None, "unparseable", f"malformed response ({exc})")
            except OSError as exc:
                last = f"connection error ({exc})"
        return Score(None, "error", f"{last} (after {self.max_retries + 1} attempts)")

    def _request(self, prompt: str) -> Score:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "seed": 0,
        }
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 20
        payload = self._post(body)
        if isinstance(payload, Score):
            return payload
        try:
            return self._parse(payload)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return Score(None, "unparseable", f"malformed response ({exc})")

    def complete(self, prompts: Sequence[str], max_tokens: int = 256) -> list[str | None]:
        """Free-text answers (``temperature 0``) to ``prompts``, concurrently; ``None`` for a
        request that failed after its retries or came back malformed."""
        self._key()

        def one(prompt: str) -> str | None:
            body = {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": int(max_tokens),
                "seed": 0,
            }
            payload = self._post(body)
            if isinstance(payload, Score):
                return None
            try:
                return str((payload["choices"][0].get("message") or {}).get("content") or "")
            except (KeyError, IndexError, TypeError, AttributeError):
                return None

        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(one, prompts))

    def _parse(self, payload: dict[str, Any]) -> Score:
        choice = payload["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        lp = choice.get("logprobs") or {}
        content = lp.get("content") if isinstance(lp, dict) else None
        if content:
            v = score_from_logprobs(content[0].get("top_logprobs") or [])
            if v is not None:
                return Score(v, "ok", text.strip()[:200])
        return score_from_text(text)

    def score_batch(
        self, kind: str, items: Sequence[tuple[str, str]], trait: TraitInfo | None
    ) -> list[Score]:
        self._key()  # fail before any request
        prompts = [render_prompt(kind, q, r, trait) for q, r in items]
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(self._request, prompts))


def _short(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode("utf-8", errors="replace")[:200]
    except Exception:
        return str(exc)[:200]
