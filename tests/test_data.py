from __future__ import annotations

import pytest

from deltalens.data import bundled_prompts, read_capture_inputs, read_jsonl, read_prompts
from deltalens.errors import DataFormatError


def test_jsonl_errors_name_file_and_line(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"question": "ok"}\n\n[1, 2]\n')
    with pytest.raises(DataFormatError, match=r"a.jsonl:3: expected a JSON object, got list"):
        read_jsonl(f)
    f.write_text('{"question": "ok"}\n{"q": 1}\n')
    with pytest.raises(DataFormatError, match=r"a.jsonl:2: missing key 'question' \(keys: q\)"):
        read_jsonl(f, required=["question"])
    f.write_text('{"question": 3}\n')
    with pytest.raises(DataFormatError, match=r"a.jsonl:1: 'question' must be str, got int"):
        read_jsonl(f, types={"question": str})
    with pytest.raises(DataFormatError, match="file not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_prompt_sets_in_all_formats(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"content": "Hi?", "label": "greeting"}\n{"question": "Why?"}\n')
    (tmp_path / "p.json").write_text('{"prompts": [{"id": 1, "text": "A", "note": "syc"}, "B"]}')
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    a = read_prompts(tmp_path / "p.jsonl")
    assert [(r.text, r.label) for r in a] == [("Hi?", "greeting"), ("Why?", None)]
    b = read_prompts(tmp_path / "p.json")
    assert [(r.text, r.label, r.id) for r in b] == [("A", "syc", 1), ("B", None, None)]
    assert [r.text for r in read_prompts(tmp_path / "p.txt")] == ["one", "two"]
    assert len(read_prompts(tmp_path)) == 2  # directory: its .jsonl files
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataFormatError, match="no prompts found"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"content": ""}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1: 'content' must be a non-empty string"):
        read_prompts(tmp_path / "bad.jsonl")


def test_bundled_prompt_sets():
    demo = bundled_prompts("demo_questions")
    chat = bundled_prompts("chat_prompts")
    assert len(demo) >= 10 and len(chat) == 48
    assert {r.label for r in chat} >= {"self-referential", "emotional", "factual", "coding"}
    with pytest.raises(DataFormatError, match="available: chat_prompts, demo_questions"):
        bundled_prompts("nope")


def test_capture_inputs(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "raw"}\n{"prompt": "P", "response": "R"}\n{"content": "Q"}\n')
    items = read_capture_inputs(f)
    assert items[0] == "raw" and items[1] == {"prompt": "P", "response": "R"}
    assert items[2] == {"question": "Q", "system": None, "response": ""}
    f.write_text('{"foo": 1}\n')
    with pytest.raises(DataFormatError, match="c.jsonl:1: needs 'text'"):
        read_capture_inputs(f)
