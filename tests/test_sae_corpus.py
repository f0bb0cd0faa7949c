"""Text corpora for SAE training: files, directories, HF datasets on disk, token windows."""

from __future__ import annotations

import json

import pytest

from deltalens.data.corpus import read_texts, token_windows
from deltalens.errors import DataFormatError


def test_read_texts_from_files_dirs_and_datasets(tmp_path, tok):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("first document\nwith two lines\n")
    (tmp_path / "d" / "b.jsonl").write_text(
        json.dumps({"text": "second"}) + "\n" + json.dumps({"text": "third"}) + "\n"
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["fourth", ""]}), tmp_path / "d" / "c.parquet")
    assert list(read_texts(tmp_path / "d")) == [
        "first document\nwith two lines\n",
        "second",
        "third",
        "fourth",
    ]
    import datasets

    datasets.Dataset.from_dict({"body": ["x y", "z"]}).save_to_disk(str(tmp_path / "hf"))
    assert list(read_texts(tmp_path / "hf", text_key="body")) == ["x y", "z"]
    with pytest.raises(DataFormatError, match="no 'text' column"):
        list(read_texts(tmp_path / "hf"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"content": "no"}) + "\n")
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: no 'text' key"):
        list(read_texts(bad))
    with pytest.raises(DataFormatError, match="file not found"):
        list(read_texts(tmp_path / "missing.txt"))


def test_token_windows_concatenate_documents(tok):
    docs = ["alpha beta gamma delta", "epsilon zeta", "eta theta iota kappa lambda mu"]
    ids = []
    for d in docs:
        ids += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    w = list(token_windows(tok, docs, 5, bos=None))
    assert all(len(x["prompt_ids"]) == 5 for x in w)
    assert [t for x in w for t in x["prompt_ids"]] == ids[: 5 * len(w)]  # no token lost or reordered
    wb = list(token_windows(tok, docs, 5, bos=99, max_windows=2))
    assert len(wb) == 2 and all(x["prompt_ids"][0] == 99 for x in wb)
    assert [t for x in wb for t in x["prompt_ids"][1:]] == ids[:8]
