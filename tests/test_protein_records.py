"""Protein records: FASTA, CSV/Parquet, ZymCTRL text, Stockholm, SwissProt; validation errors."""

from __future__ import annotations

import pytest

from deltalens.errors import DataFormatError
from deltalens.protein.records import (
    ZYMCTRL,
    ProteinRecord,
    check_sequence,
    parse_text,
    read_records,
    read_stockholm,
    read_swissprot,
    write_fasta,
    write_table_records,
    write_text_records,
)

RECS = [ProteinRecord("p1", "fn3", "MKVLAAGIVG" * 9), ProteinRecord("p2", "3.2.1.1", "WWPPCC")]


@pytest.mark.parametrize("suffix", [".fasta", ".csv", ".parquet", ".txt"])
def test_round_trip(tmp_path, suffix):
    p = tmp_path / f"recs{suffix}"
    if suffix == ".fasta":
        write_fasta(p, RECS)
    elif suffix == ".txt":
        write_text_records(p, RECS)
    else:
        write_table_records(p, RECS)
    got = read_records(p)
    assert [(r.tag, r.sequence) for r in got] == [(r.tag, r.sequence) for r in RECS]
    if suffix != ".txt":
        assert [r.id for r in got] == ["p1", "p2"]


def test_zymctrl_text_form():
    assert ZYMCTRL.prompt("1.1.1.1") == "1.1.1.1<sep><start>"
    assert ZYMCTRL.text("1.1.1.1", "MKV") == "1.1.1.1<sep><start>MKV<end>"
    assert parse_text("1.1.1.1<sep><start>MKV<end><|endoftext|>") == ("1.1.1.1", "MKV")
    assert parse_text("1.1.1.1<sep><start>MKVL") == ("1.1.1.1", "MKVL")  # cut at the length limit


def test_text_file_with_two_records_on_a_line(tmp_path):
    p = tmp_path / "z.txt"
    p.write_text("1.1.1.1<sep><start>MKV<end><|endoftext|>2.7.11.1<sep><start>GGH<end><|endoftext|>\n")
    got = read_records(p)
    assert [(r.id, r.tag, r.sequence) for r in got] == [
        ("line1.1", "1.1.1.1", "MKV"),
        ("line1.2", "2.7.11.1", "GGH"),
    ]


def test_bad_letter_names_file_line_and_record(tmp_path):
    p = tmp_path / "bad.fasta"
    p.write_text(">ok\nMKV\n>broken tag=fn3\nMKV\nLLJAA\n")
    with pytest.raises(DataFormatError, match=rf"{p}:3: record 'broken': letter 'J' at position 6"):
        read_records(p)


def test_empty_and_long_sequences(tmp_path):
    p = tmp_path / "e.fasta"
    p.write_text(">a\nMKV\n>empty\n>c\nMK\n")
    with pytest.raises(DataFormatError, match=rf"{p}:3: record 'empty': empty sequence"):
        read_records(p)
    q = tmp_path / "long.csv"
    q.write_text("id,tag,sequence\nx,fn3,MKVLA\ny,fn3,MK\n")
    with pytest.raises(DataFormatError, match=rf"{q}:2: record 'x': sequence of 5 residues is longer than 4"):
        read_records(q, max_length=4)
    assert check_sequence(" mkv ", "w") == "MKV"
    assert check_sequence("MKX", "w", alphabet="extended") == "MKX"


def test_csv_without_a_sequence_column(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("id,protein\nx,MKV\n")
    with pytest.raises(DataFormatError, match="no sequence column"):
        read_records(p)


def test_stockholm_is_ungapped_and_upper_cased(tmp_path):
    p = tmp_path / "fam.sto"
    p.write_text(
        "# STOCKHOLM 1.0\n#=GF ID fam\n\nseq1  MK-VL..aa\nseq2  MKKVL--GG\n\nseq1  WW\nseq2  W-\n//\n"
    )
    got = read_stockholm(p)
    assert [(r.id, r.tag, r.sequence) for r in got] == [
        ("seq1", "fam", "MKVLAAWW"),
        ("seq2", "fam", "MKKVLGGW"),
    ]


def test_swissprot_flat_file(tmp_path):
    p = tmp_path / "sp.dat"
    p.write_text(
        "ID   TEST1_HUMAN   Reviewed;   12 AA.\nAC   P00001;\nSQ   SEQUENCE   12 AA;\n"
        "     MKVLAA GIVGKK\n//\nID   TEST2_HUMAN\nSQ   SEQUENCE\n     MKBXZ\n//\n"
    )
    got = read_swissprot(p)
    assert [(r.id, r.sequence) for r in got] == [
        ("TEST1_HUMAN", "MKVLAAGIVGKK")
    ]  # non-standard letters skipped
