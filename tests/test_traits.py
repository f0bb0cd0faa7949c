"""Trait datasets: bundled traits and validation errors naming file and line."""

from __future__ import annotations

import json
import shutil

import pytest

from deltalens.data.traits import bundled_traits, load_trait, resolve_trait_path
from deltalens.errors import DataFormatError


def test_bundled_traits_are_complete():
    ids = bundled_traits()
    for name in ("sycophancy", "pirate", "enthusiasm"):
        assert f"instruction/{name}" in ids and f"natural/{name}" in ids
    for tid in ids:
        t = load_trait(tid)
        assert len(t.positive) >= 40 and len(t.negative) >= 40, tid
        assert len(t.steering_questions) == 20, tid
        assert len(t.definition) > 100
        if t.format == "instruction":
            assert t.paired and all(s.system for s in t.positive + t.negative)
            assert [s.question for s in t.positive] == [s.question for s in t.negative]
            # positive and negative system prompts differ for every scenario
            assert all(a.system != b.system for a, b in zip(t.positive, t.negative))
        else:
            assert all(s.system is None for s in t.positive)
    # both formats of a trait share the held-out questions (fair comparison of sources)
    assert (
        load_trait("instruction/pirate").steering_questions == load_trait("natural/pirate").steering_questions
    )


def test_seed_aliases():
    assert load_trait("pv_instruction/sycophancy").id == "instruction/sycophancy"
    assert load_trait("pv_natural/sycophancy").id == "natural/sycophancy"
    with pytest.raises(
        DataFormatError, match="unknown trait 'instruction/nope'.*bundled: .*instruction/pirate"
    ):
        load_trait("instruction/nope")


@pytest.fixture
def trait_dir(tmp_path):
    src = resolve_trait_path("instruction/pirate")
    dst = tmp_path / "pirate"
    shutil.copytree(src, dst)
    return dst


def test_bad_jsonl_line_names_file_and_line(trait_dir):
    lines = (trait_dir / "positive.jsonl").read_text().splitlines()
    lines[2] = '{"question": "What?", "system_prompt": '
    (trait_dir / "positive.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"positive\.jsonl:3: invalid JSON"):
        load_trait(trait_dir)


def test_missing_system_prompt(trait_dir):
    lines = (trait_dir / "negative.jsonl").read_text().splitlines()
    rec = json.loads(lines[4])
    del rec["system_prompt"]
    lines[4] = json.dumps(rec)
    (trait_dir / "negative.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"negative\.jsonl:5: missing key 'system_prompt'"):
        load_trait(trait_dir)


def test_leaked_steering_question_is_refused(trait_dir):
    q = json.loads((trait_dir / "positive.jsonl").read_text().splitlines()[0])["question"]
    data = json.loads((trait_dir / "steering.json").read_text())
    data["questions"][3] = q
    (trait_dir / "steering.json").write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match="steering questions must be held out"):
        load_trait(trait_dir)


def test_unpaired_instruction_questions(trait_dir):
    lines = (trait_dir / "negative.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["question"] = "Something else entirely?"
    lines[1] = json.dumps(rec)
    (trait_dir / "negative.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataFormatError, match=r"negative\.jsonl:2: negative scenario 1 asks .* pair questions line by line"
    ):
        load_trait(trait_dir)


def test_natural_format_errors(tmp_path):
    d = tmp_path / "t"
    shutil.copytree(resolve_trait_path("natural/pirate"), d)
    (d / "negative.txt").write_text("")
    with pytest.raises(DataFormatError, match=r"negative\.txt: no scenarios"):
        load_trait(d)
    (d / "negative.txt").write_text('A plain opening\n\n{"json": 1}\n')
    with pytest.raises(DataFormatError, match=r"negative\.txt:3: looks like JSON"):
        load_trait(d)
    (d / "negative.txt").write_text("A plain opening\n")
    (d / "steering.json").write_text('{"qs": []}')
    with pytest.raises(DataFormatError, match=r"steering\.json: expected \{'questions'"):
        load_trait(d)
    (d / "definition.txt").unlink()
    (d / "steering.json").write_text('["a?", "b?"]')
    with pytest.raises(DataFormatError, match=r"definition\.txt: missing"):
        load_trait(d)


def test_cli_traits_lists_and_validates(trait_dir):
    from deltalens.cli import main

    with pytest.raises(SystemExit) as e:
        main(["traits", "--validate", str(trait_dir / "nope")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["traits", "--validate", str(trait_dir)])
    assert e.value.code == 0


def test_evil_and_hallucination_bundled_in_both_formats():
    from deltalens.data.traits import _normalise

    for name in ("evil", "hallucination"):
        inst, nat = load_trait(f"pv_instruction/{name}"), load_trait(f"pv_natural/{name}")
        assert (inst.id, nat.id) == (f"instruction/{name}", f"natural/{name}")
        assert len(inst.positive) == len(inst.negative) == 44  # the size of the other bundled traits
        assert len(nat.positive) == len(nat.negative) == 42
        assert inst.steering_questions == nat.steering_questions and len(inst.steering_questions) == 20
        assert name in inst.definition.lower()
        # 5 distinct system prompts per polarity, none shared between polarities
        pos_sys = {s.system for s in inst.positive}
        neg_sys = {s.system for s in inst.negative}
        assert len(pos_sys) == len(neg_sys) == 5 and not pos_sys & neg_sys
        # natural openings differ between polarities line by line (they are contrastive pairs)
        assert all(a.question != b.question for a, b in zip(nat.positive, nat.negative))
        # held out: no steering question overlaps a scenario of either format, even loosely
        scen = {_normalise(s.question) for t in (inst, nat) for s in t.positive + t.negative}
        assert not {_normalise(q) for q in inst.steering_questions} & scen


def test_overlap_is_detected_after_normalising(trait_dir):
    q = json.loads((trait_dir / "negative.jsonl").read_text().splitlines()[7])["question"]
    data = json.loads((trait_dir / "steering.json").read_text())
    data["questions"][0] = "  " + q.lower().replace("?", " ?!") + " "
    (trait_dir / "steering.json").write_text(json.dumps(data))
    with pytest.raises(
        DataFormatError, match=r"steering question 0 .*/positive\.jsonl:8; steering questions"
    ):
        load_trait(trait_dir)


def test_steering_combined_numbers_questions_per_trait(tmp_path):
    from deltalens.cli import main
    from deltalens.data.prompts import read_prompts

    out = tmp_path / "steering_combined.json"
    with pytest.raises(SystemExit) as exc:
        main(["traits", "--combined", str(out)])
    assert exc.value.code in (0, None)
    data = json.loads(out.read_text())
    assert [p["id"] for p in data["prompts"]] == list(range(1, 61))
    expected = [
        (i + 1 + 20 * k, q, name)
        for k, name in enumerate(("sycophancy", "evil", "hallucination"))
        for i, q in enumerate(
            json.loads((resolve_trait_path(f"instruction/{name}") / "steering.json").read_text())["questions"]
        )
    ]
    assert [(p["id"], p["text"], p["note"]) for p in data["prompts"]] == expected
    # it is a prompt set the capture/generate commands read, with the trait as the label
    recs = read_prompts(out)
    assert len(recs) == 60 and recs[20].label == "evil" and recs[59].id == 60
