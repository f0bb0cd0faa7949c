"""Protein records (a control tag + an amino-acid sequence), their file formats and validation.

A :class:`ProteinRecord` is ``(id, tag, sequence)``: ``tag`` is the control tag of a ZymCTRL-style
conditional LM (an EC number such as ``3.2.1.1``, or a family name such as ``fn3``), ``sequence``
upper-case one-letter amino acids. Formats read by :func:`read_records` (chosen by suffix):

* FASTA (``.fa``, ``.fasta``, ``.faa``): ``>ID [tag=TAG]`` headers; a record without ``tag=`` gets
  the ``tag`` argument;
* CSV / Parquet: a ``sequence`` (or ``seq``) column, optional ``tag`` and ``id`` columns;
* ZymCTRL text (``.txt``): one record per line in the LM's own form
  ``TAG<sep><start>SEQUENCE<end>`` (a trailing ``<|endoftext|>`` / ``<pad>`` is ignored; records
  separated by ``<|endoftext|>`` on one line are split);
* Stockholm (``.sto``) and SwissProt flat files (``.dat``, ``.swiss``) for the training corpus.

Validation (:func:`check_sequence`): every letter in the alphabet (``standard``: the 20 amino
acids; ``extended``: plus ``BJOUXZ``), non-empty, at most ``max_length`` residues. Errors are
:class:`~deltalens.errors.DataFormatError` naming the file, the line (where there is one) and the
record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataFormatError

STANDARD = "ACDEFGHIKLMNPQRSTVWY"
EXTENDED = STANDARD + "BJOUXZ"
ALPHABETS = {"standard": STANDARD, "extended": EXTENDED}
FASTA_SUFFIXES = (".fa", ".fasta", ".faa", ".fas")
TABLE_SUFFIXES = (".csv", ".parquet")
TEXT_SUFFIXES = (".txt",)
SEQUENCE_COLUMNS = ("sequence", "seq")
_TAG_RE = re.compile(r"(?:^|\s)tag=(\S+)")


@dataclass(frozen=True)
class ProteinFormat:
    """How a ZymCTRL-style LM writes a record: ``tag + sep + start + sequence + end``.

    ZymCTRL's own tokens are the defaults; a model directory may override them in
    ``protein_lm.json`` (:func:`deltalens.protein.lm.protein_format`)."""

    sep: str = "<sep>"
    start: str = "<start>"
    end: str = "<end>"
    eos: str = "<|endoftext|>"
    pad: str = "<pad>"

    def prompt(self, tag: str) -> str:
        """The generation prompt of a tag: ``TAG<sep><start>``."""
        return f"{tag}{self.sep}{self.start}"

    def text(self, tag: str, sequence: str) -> str:
        """The training text of a record: ``TAG<sep><start>SEQUENCE<end>``."""
        return f"{tag}{self.sep}{self.start}{sequence}{self.end}"

    def to_dict(self) -> dict[str, str]:
        return {"sep": self.sep, "start": self.start, "end": self.end, "eos": self.eos, "pad": self.pad}


ZYMCTRL = ProteinFormat()


@dataclass(frozen=True)
class ProteinRecord:
    """One protein: an id, its control tag and its sequence."""

    id: str
    tag: str
    sequence: str

    def __len__(self) -> int:
        return len(self.sequence)


def alphabet_of(name: str) -> str:
    """The letters of a named alphabet (``standard`` or ``extended``)."""
    try:
        return ALPHABETS[name]
    except KeyError:
        raise ConfigError(f"unknown amino-acid alphabet '{name}'; valid: {', '.join(ALPHABETS)}") from None


def check_sequence(
    seq: str, where: str, *, alphabet: str = "standard", max_length: int | None = None, min_length: int = 1
) -> str:
    """``seq`` upper-cased and checked; a :class:`DataFormatError` starting with ``where`` (the file,
    line and record) names the first bad letter and its 1-based position, an empty sequence, or a
    length over ``max_length``."""
    letters = alphabet_of(alphabet)
    s = seq.strip().upper()
    if not s:
        raise DataFormatError(f"{where}: empty sequence")
    bad = next((i for i, c in enumerate(s) if c not in letters), None)
    if bad is not None:
        raise DataFormatError(
            f"{where}: letter {s[bad]!r} at position {bad + 1} is not an amino acid of the {alphabet} "
            f"alphabet ({letters})"
        )
    if len(s) < min_length:
        raise DataFormatError(f"{where}: sequence of {len(s)} residues is shorter than {min_length}")
    if max_length is not None and len(s) > max_length:
        raise DataFormatError(f"{where}: sequence of {len(s)} residues is longer than {max_length}")
    return s


def _record_where(path: Any, line: int | None, rid: str | None, index: int) -> str:
    at = f"{path}:{line}" if line is not None else str(path)
    return f"{at}: record {rid!r}" if rid else f"{at}: record {index + 1}"


# ---- FASTA --------------------------------------------------------------------------------------


def iter_fasta(path: str | Path) -> Iterator[tuple[int, str, str]]:
    """``(header_line, header, sequence)`` of each FASTA record (sequence lines joined, spaces
    removed). Text before the first ``>`` is an error naming the line."""
    from ..data.jsonl import iter_lines

    path = Path(path)
    header: str | None = None
    line0 = 0
    chunks: list[str] = []
    for n, text in iter_lines(path):
        if text.startswith(">"):
            if header is not None:
                yield line0, header, "".join(chunks)
            header, line0, chunks = text[1:].strip(), n, []
        elif text.strip():
            if header is None:
                raise DataFormatError(f"{path}:{n}: sequence data before the first '>' header (not FASTA)")
            chunks.append("".join(text.split()))
    if header is not None:
        yield line0, header, "".join(chunks)


def read_fasta(
    path: str | Path,
    *,
    tag: str = "",
    alphabet: str = "standard",
    max_length: int | None = None,
    require: bool = True,
) -> list[ProteinRecord]:
    """Records of a FASTA file, validated (module docstring). ``require``: a file with no
    record is an error."""
    path = Path(path)
    out = []
    for i, (n, header, seq) in enumerate(iter_fasta(path)):
        rid = header.split()[0] if header.split() else f"record{i + 1}"
        m = _TAG_RE.search(header)
        s = check_sequence(seq, _record_where(path, n, rid, i), alphabet=alphabet, max_length=max_length)
        out.append(ProteinRecord(rid, m.group(1) if m else tag, s))
    if require and not out:
        raise DataFormatError(f"{path}: no sequences (expected FASTA records starting with '>')")
    return out


def write_fasta(path: str | Path, records: Iterable[ProteinRecord], width: int = 80) -> Path:
    """Write records as FASTA (``>ID tag=TAG``), atomically."""
    from ..io import atomic_write

    lines = []
    for r in records:
        lines.append(f">{r.id}" + (f" tag={r.tag}" if r.tag else ""))
        lines.extend(r.sequence[k : k + width] for k in range(0, len(r.sequence), width))
    return atomic_write(path, "\n".join(lines) + "\n")


# ---- ZymCTRL text -------------------------------------------------------------------------------


def parse_text(
    text: str, fmt: ProteinFormat = ZYMCTRL, where: str = "<text>", *, alphabet: str = "standard"
) -> tuple[str, str]:
    """``(tag, sequence)`` of one ``TAG<sep><start>SEQUENCE<end>`` string (the end token optional:
    a generation cut at its length limit has none)."""
    s = text.strip()
    for t in (fmt.eos, fmt.pad):
        s = s.replace(t, "")
    if fmt.sep not in s:
        raise DataFormatError(f"{where}: no '{fmt.sep}' between the tag and the sequence: {s[:40]!r}")
    tag, _, rest = s.partition(fmt.sep)
    rest = rest.removeprefix(fmt.start)
    rest = rest.split(fmt.end, 1)[0]
    if not tag.strip():
        raise DataFormatError(f"{where}: empty tag before '{fmt.sep}'")
    return tag.strip(), check_sequence(rest, where, alphabet=alphabet)


def read_text_records(
    path: str | Path, fmt: ProteinFormat = ZYMCTRL, *, alphabet: str = "standard"
) -> list[ProteinRecord]:
    """Records of a ZymCTRL text file (module docstring); ids are ``line<N>[.<k>]``."""
    from ..data.jsonl import iter_lines

    path = Path(path)
    out = []
    for n, line in iter_lines(path):
        parts = [p for p in line.split(fmt.eos) if p.strip() and p.strip() != fmt.pad]
        for k, part in enumerate(parts):
            rid = f"line{n}" if len(parts) == 1 else f"line{n}.{k + 1}"
            tag, seq = parse_text(part, fmt, f"{path}:{n}: record {rid!r}", alphabet=alphabet)
            out.append(ProteinRecord(rid, tag, seq))
    return out


def write_text_records(
    path: str | Path, records: Iterable[ProteinRecord], fmt: ProteinFormat = ZYMCTRL
) -> Path:
    """One ``TAG<sep><start>SEQUENCE<end>`` line per record, atomically."""
    from ..io import atomic_write

    return atomic_write(path, "".join(fmt.text(r.tag, r.sequence) + "\n" for r in records))


# ---- tables -------------------------------------------------------------------------------------


def read_table_records(
    path: str | Path, *, tag: str = "", alphabet: str = "standard", max_length: int | None = None
) -> list[ProteinRecord]:
    """Records of a CSV/Parquet table with a ``sequence`` column (optional ``tag``, ``id``)."""
    from ..probes.metrics import read_table_file

    path = Path(path)
    df = read_table_file(path)
    col = next((c for c in SEQUENCE_COLUMNS if c in df.columns), None)
    if col is None:
        raise DataFormatError(
            f"{path}: no sequence column (expected one of {', '.join(SEQUENCE_COLUMNS)}; columns: "
            f"{', '.join(map(str, df.columns))})"
        )
    out = []
    line_off = 2 if path.suffix.lower() == ".csv" else None  # header is line 1
    for i, row in enumerate(df.to_dict("records")):
        rid = str(row["id"]) if "id" in row and row["id"] is not None else f"row{i + 1}"
        line = i + line_off if line_off else None
        seq = row[col]
        where = _record_where(path, line, rid, i)
        if not isinstance(seq, str):
            seq = "" if seq is None or seq != seq else str(seq)  # NaN → empty
        s = check_sequence(seq, where, alphabet=alphabet, max_length=max_length)
        t = row.get("tag", tag)
        out.append(ProteinRecord(rid, "" if t is None or t != t else str(t), s))
    return out


def write_table_records(path: str | Path, records: Iterable[ProteinRecord]) -> Path:
    """Records as CSV or Parquet (columns id, tag, sequence), atomically."""
    import pandas as pd

    from ..io import atomic_path

    path = Path(path)
    df = pd.DataFrame([{"id": r.id, "tag": r.tag, "sequence": r.sequence} for r in records])
    with atomic_path(path, path.suffix) as tmp:
        df.to_parquet(tmp) if path.suffix.lower() == ".parquet" else df.to_csv(tmp, index=False)
    return path


# ---- corpus formats (Stockholm, SwissProt) ------------------------------------------------------


def read_stockholm(path: str | Path, *, tag: str = "") -> list[ProteinRecord]:
    """Ungapped sequences of a (possibly gzipped, possibly multi-alignment) Stockholm file: gap
    characters (``-``, ``.``) removed, insert columns (lower case) upper-cased; sequences with
    letters outside the standard alphabet are skipped (they are training data, not input)."""
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    seqs: dict[str, list[str]] = {}
    out: list[ProteinRecord] = []
    name = tag
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        for line in fh:
            if line.startswith("#=GF ID"):
                name = tag or line.split(None, 2)[2].strip()
            elif line.startswith("//"):
                out.extend(_ungapped(seqs, name))
                seqs, name = {}, tag
            elif line.strip() and not line.startswith("#"):
                parts = line.split()
                if len(parts) == 2:
                    seqs.setdefault(parts[0], []).append(parts[1])
    out.extend(_ungapped(seqs, name))
    return out


def _ungapped(seqs: dict[str, list[str]], tag: str) -> list[ProteinRecord]:
    out = []
    for rid, chunks in seqs.items():
        s = "".join(chunks).replace("-", "").replace(".", "").upper()
        if s and all(c in STANDARD for c in s):
            out.append(ProteinRecord(rid, tag, s))
    return out


def read_swissprot(path: str | Path, *, tag: str = "swissprot") -> list[ProteinRecord]:
    """Sequences of a SwissProt flat file (``ID`` … ``SQ`` … ``//``); non-standard letters skipped."""
    path = Path(path)
    out: list[ProteinRecord] = []
    rid, seq, in_sq = "", [], False
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("ID "):
                rid, seq, in_sq = line.split()[1], [], False
            elif line.startswith("SQ "):
                in_sq = True
            elif line.startswith("//"):
                s = "".join(seq).upper()
                if rid and s and all(c in STANDARD for c in s):
                    out.append(ProteinRecord(rid, tag, s))
                rid, seq, in_sq = "", [], False
            elif in_sq:
                seq.append("".join(line.split()))
    return out


# ---- one entry point ----------------------------------------------------------------------------


def read_records(
    path: str | Path,
    *,
    tag: str = "",
    alphabet: str = "standard",
    max_length: int | None = None,
    fmt: ProteinFormat = ZYMCTRL,
) -> list[ProteinRecord]:
    """Records from any supported file (module docstring), chosen by suffix; an empty file is an
    error naming it."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: protein file not found")
    suf = p.suffix.lower()
    if suf in FASTA_SUFFIXES:
        recs = read_fasta(p, tag=tag, alphabet=alphabet, max_length=max_length)
    elif suf in TABLE_SUFFIXES:
        recs = read_table_records(p, tag=tag, alphabet=alphabet, max_length=max_length)
    elif suf in TEXT_SUFFIXES:
        recs = read_text_records(p, fmt, alphabet=alphabet)
    elif suf == ".sto" or p.name.endswith(".sto.gz"):
        recs = read_stockholm(p, tag=tag)
    elif suf in (".dat", ".swiss"):
        recs = read_swissprot(p, tag=tag or "swissprot")
    else:
        raise DataFormatError(
            f"{p}: unknown protein format '{suf}' (use .fasta/.fa, .csv, .parquet, .txt (ZymCTRL text), .sto, .dat)"
        )
    if not recs:
        raise DataFormatError(f"{p}: no sequences")
    if max_length is not None:
        for i, r in enumerate(recs):
            if len(r) > max_length:
                raise DataFormatError(
                    f"{_record_where(p, None, r.id, i)}: sequence of {len(r)} residues is longer than {max_length}"
                )
    return recs


def sequences_of(items: Sequence[Any]) -> list[str]:
    """Plain sequence strings of records, generations (their ``response``) or strings."""
    out = []
    for x in items:
        if isinstance(x, ProteinRecord):
            out.append(x.sequence)
        elif isinstance(x, str):
            out.append(x)
        elif hasattr(x, "response"):
            out.append(str(x.response))
        elif isinstance(x, dict) and ("sequence" in x or "text" in x):
            out.append(str(x.get("sequence", x.get("text"))))
        else:
            raise DataFormatError(f"not a protein sequence: {type(x).__name__}")
    return out
