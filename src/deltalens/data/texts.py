"""Inputs for ``capture``: texts, prompt/response pairs and prompt sets from files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from .jsonl import iter_jsonl, iter_lines
from .prompts import TEXT_KEYS


def read_capture_inputs(path: str | Path) -> list[Any]:
    """Read capture inputs from a file.

    * ``.txt`` — one text per non-blank line (raw text, no chat template);
    * ``.jsonl`` — per line one of: ``{"text"}`` (raw text); ``{"prompt", "response"}``
      (formatted prompt + response, e.g. written by ``deltalens generate``);
      ``{"question"|"content", "response"[, "system"]}`` (formatted with the chat
      template); ``{"question"|"content"[, "system"]}`` alone — a chat-formatted prompt
      with an empty response (for prompt / token-type positions).
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    if path.suffix == ".txt":
        items: list[Any] = [line for _, line in iter_lines(path) if line.strip()]
    elif path.suffix == ".jsonl":
        items = []
        for n, rec in iter_jsonl(path):
            if "prompt_ids" in rec and "response_ids" in rec:
                items.append({"prompt_ids": rec["prompt_ids"], "response_ids": rec["response_ids"]})
            elif "response" in rec and "prompt" in rec:
                items.append({"prompt": rec["prompt"], "response": rec["response"]})
            elif "text" in rec and "response" not in rec:
                if not isinstance(rec["text"], str):
                    raise DataFormatError(f"{path}:{n}: 'text' must be a string")
                items.append(rec["text"])
            else:
                key = next((k for k in TEXT_KEYS if k in rec and k != "text"), None)
                if key is None:
                    raise DataFormatError(
                        f"{path}:{n}: needs 'text', 'prompt'+'response' or 'question'/'content' (keys: {', '.join(rec)})"
                    )
                items.append(
                    {
                        "question": rec[key],
                        "system": rec.get("system", rec.get("system_prompt")),
                        "response": rec.get("response", ""),
                    }
                )
    else:
        raise DataFormatError(f"{path}: unsupported input file type '{path.suffix}' (use .txt or .jsonl)")
    if not items:
        raise DataFormatError(f"{path}: no inputs found (the file is empty)")
    return items
