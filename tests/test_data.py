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


def test_non_utf8_bytes_name_the_file_line_and_byte_in_every_reader(tmp_path):
    from deltalens.data.traits import read_steering_questions
    from deltalens.io import read_json

    good = "café\n".encode()  # 6 bytes: the bad byte of line 2 sits at offset 6 + 4 = 10
    cases = {
        "t.txt": (good + b"bad \xff\n", [read_capture_inputs, read_prompts]),
        "t.jsonl": (
            b'{"text": "caf\xc3\xa9"}\n{"text": "\xe9t\xe9"}\n',
            [read_capture_inputs, read_prompts, read_jsonl],
        ),
    }
    for name, (data, readers) in cases.items():
        f = tmp_path / name
        f.write_bytes(data)
        at = 10 if name == "t.txt" else len(data.split(b"\n")[0]) + 1 + len(b'{"text": "')
        for read in readers:
            with pytest.raises(DataFormatError, match=rf"{name}:2: not valid UTF-8 at byte {at} "):
                read(f)
    j = tmp_path / "steering.json"
    j.write_bytes(b'{"questions": ["ok",\n "\xff"]}')
    for read in (read_json, read_steering_questions):
        with pytest.raises(DataFormatError, match=r"steering.json:2: not valid UTF-8 at byte 23"):
            read(j)


def test_jsonl_columns_count_in_the_real_line_and_line_endings(tmp_path):
    f = tmp_path / "a.jsonl"
    # a carriage return between tokens is JSON whitespace: it neither splits the line nor shifts columns
    f.write_bytes(b'{"text": "fine"}\n{"text": "fine",\r "x": }\n')
    with pytest.raises(DataFormatError, match=r"a.jsonl:2: invalid JSON at column 24 \(Expecting value\)"):
        read_jsonl(f)
    f.write_bytes(
        b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b\xe2\x80\xa8c"}\r\n'
    )  # BOM, CRLF, U+2028 inside a string
    assert read_jsonl(f) == [{"text": "a"}, {"text": "b\u2028c"}]
    t = tmp_path / "a.txt"
    t.write_bytes(b"\xef\xbb\xbfone\r\ntwo \xe2\x80\xa8 still two\r\n\r\n")
    assert read_capture_inputs(t) == ["one", "two \u2028 still two"]
    assert [r.text for r in read_prompts(t)] == ["one", "two \u2028 still two"]
