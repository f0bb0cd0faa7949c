"""Profile-HMM bit scores with pyhmmer — the offline stand-in for an activity oracle.

``score(s)`` is the per-sequence bit score that ``hmmsearch`` reports for sequence ``s`` against
the profile: ``log2 P(s | HMM) / P(s | null)`` (Forward score, corrected for biased composition by
null2), in the most sensitive setting (``--max``: no MSV/Viterbi/Forward filters, no bias filter)
with every hit reported (``-E``/``--domE`` at 1e300). A sequence in which hmmsearch defines no
domain (no detectable similarity at all) scores ``no_hit`` (default −20 bits, below the scores
of unrelated sequences of protein length) and is counted in ``hit = 0``.

HMMs are named by file (``.hmm``, ``.hmm.gz``; one profile, or several with ``@NAME`` choosing
one) or by the name of a profile shipped by Debian's ``hmmer-examples`` (``Pkinase``, ``fn3``,
``globins4``, ``RRM_1``, ``Caudal_act``, ``LuxC``, ``Patched``, ``SMC_N`` …; see
:func:`example_hmms`).
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataFormatError

EXAMPLES_DIR = Path("/usr/share/doc/hmmer/examples")
SEARCH_OPTIONS: dict[str, Any] = {
    "bias_filter": False,
    "F1": 1.0,
    "F2": 1.0,
    "F3": 1.0,
    "E": 1e300,
    "domE": 1e300,
}
NO_HIT = -20.0
_AMINO = None


def amino():
    """The pyhmmer amino-acid alphabet (one instance)."""
    global _AMINO
    if _AMINO is None:
        import pyhmmer

        _AMINO = pyhmmer.easel.Alphabet.amino()
    return _AMINO


def example_hmms(root: str | Path = EXAMPLES_DIR) -> dict[str, Path]:
    """Protein profile HMMs shipped by ``hmmer-examples``: name → file (empty when not installed)."""
    out: dict[str, Path] = {}
    root = Path(root)
    for sub in ("tutorial", "testsuite"):
        d = root / sub
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.name.endswith((".hmm", ".hmm.gz")) and "-nt" not in p.name:
                out[p.name.split(".hmm")[0]] = p
    return out


def example_alignments(root: str | Path = EXAMPLES_DIR) -> dict[str, Path]:
    """Seed alignments (Stockholm) shipped by ``hmmer-examples``: name → file."""
    out: dict[str, Path] = {}
    root = Path(root)
    for sub in ("tutorial", "testsuite"):
        d = root / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.name.endswith((".sto", ".sto.gz")):
                    out[p.name.split(".sto")[0]] = p
    return out


def resolve_hmm(spec: str) -> tuple[Path, str | None]:
    """``(file, profile name or None)`` of ``FILE[@NAME]`` or an example profile's name."""
    path, _, name = str(spec).partition("@")
    p = Path(path).expanduser()
    if p.is_file():
        return p, name or None
    ex = example_hmms()
    if path in ex:
        return ex[path], name or None
    if p.suffix in (".hmm", ".gz") or "/" in path:
        raise DataFormatError(f"{p}: HMM file not found")
    known = ", ".join(sorted(ex)) or "none installed (apt-get install hmmer-examples)"
    raise ConfigError(f"unknown HMM '{path}': give an .hmm file or an example profile ({known})")


def read_hmms(path: str | Path) -> list[Any]:
    """Every profile of an HMMER3 file (plain or gzipped); a file that does not parse is a
    :class:`DataFormatError` naming it and the profile that failed."""
    import pyhmmer

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: HMM file not found")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataFormatError(f"{path}: not a valid gzipped HMM file ({exc})") from None
    import io

    hmms: list[Any] = []
    try:
        with pyhmmer.plan7.HMMFile(io.BytesIO(raw)) as fh:
            for hmm in fh:
                hmms.append(hmm)
    except (ValueError, EOFError, OSError, pyhmmer.errors.EaselError) as exc:
        at = f"after profile {hmms[-1].name!r}" if hmms else "profile 1"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "format" in msg.lower() and "b'" in msg:
            msg = "unrecognised format"
        raise DataFormatError(f"{path}: not a valid HMMER3 profile file ({at}: {msg})") from None
    if not hmms:
        raise DataFormatError(f"{path}: not a valid HMMER3 profile file (no profile could be read)")
    return hmms


def _name(hmm: Any) -> str:
    n = hmm.name
    return n.decode() if isinstance(n, bytes) else str(n)


def load_hmm(spec: str) -> Any:
    """One profile from ``FILE[@NAME]`` or an example name (module docstring)."""
    path, name = resolve_hmm(spec)
    hmms = read_hmms(path)
    if name is not None:
        pick = [h for h in hmms if _name(h) == name]
        if not pick:
            raise ConfigError(f"{path}: no profile named {name!r} (has {', '.join(_name(h) for h in hmms)})")
        hmm = pick[0]
    elif len(hmms) > 1:
        raise ConfigError(
            f"{path} holds {len(hmms)} profiles ({', '.join(_name(h) for h in hmms[:6])}…); choose one with "
            f"{path}@NAME"
        )
    else:
        hmm = hmms[0]
    if hmm.alphabet != amino():
        raise DataFormatError(f"{path}: profile {_name(hmm)!r} is not an amino-acid HMM")
    return hmm


def hmm_bit_scores(
    hmm: Any, sequences: Sequence[str], *, no_hit: float = NO_HIT
) -> tuple[list[float], list[int]]:
    """``(scores, hit)`` of each sequence against ``hmm`` (module docstring); one hmmsearch pass.

    Sequences must be upper-case amino-acid letters (IUPAC codes, ``X`` allowed); empty sequences
    score ``no_hit``."""
    import pyhmmer

    abc = amino()
    digital = []
    idx = []
    for i, s in enumerate(sequences):
        if s:
            digital.append(pyhmmer.easel.TextSequence(name=str(i).encode(), sequence=s).digitize(abc))
            idx.append(i)
    scores = [float(no_hit)] * len(sequences)
    hit = [0] * len(sequences)
    if digital:
        block = pyhmmer.easel.DigitalSequenceBlock(abc, digital)
        tophits = next(iter(pyhmmer.hmmsearch(hmm, block, cpus=1, **SEARCH_OPTIONS)))
        for h in tophits:
            name = h.name.decode() if isinstance(h.name, bytes) else str(h.name)
            i = int(name)
            scores[i] = float(h.score)
            hit[i] = 1
    return scores, hit


def emit_sequences(hmm: Any, n: int, seed: int = 0) -> list[str]:
    """``n`` sequences sampled from the core model (what ``hmmemit`` writes), reproducibly."""
    import pyhmmer

    rng = pyhmmer.easel.Randomness(int(seed) or 1)
    abc = hmm.alphabet
    return [abc.decode(hmm.emit_sequence(rng).sequence) for _ in range(n)]
