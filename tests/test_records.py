import json

import pytest
from pydantic import ValidationError

from synth.io import InputError, check_unique_ids, read_records, seed_to_record
from synth.records import PreferenceRecord, SFTRecord, record_from_json
from synth.store import Store


def parse(d):
    return seed_to_record(d, "general", "seeds.jsonl")


def write(tmp_path, lines):
    p = tmp_path / "seeds.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_short_and_full_forms_round_trip(tmp_path):
    p = write(
        tmp_path,
        [
            json.dumps({"prompt": "hi"}),
            json.dumps({"id": "x", "system": "be brief", "prompt": "hello"}),
            json.dumps(
                {
                    "id": "y",
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "q2"},
                    ],
                }
            ),
        ],
    )
    recs = read_records(p, parse)
    assert [r.messages[-1].content for r in recs] == ["hi", "hello", "q2"]
    assert recs[1].messages[0].role == "system"
    assert recs[2].response is None and len(recs[2].prompt) == 3
    again = record_from_json(recs[2].to_json())
    assert again == recs[2]


@pytest.mark.parametrize(
    "line, field, fragment",
    [
        ('{"prompt": "ok"', "<json>", "invalid JSON"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages.0.role", "Input should be"),
        ('{"messages": [{"content": "x"}]}', "messages.0.role", "Field required"),
        ('{"messages": [{"role": "user", "content": ""}]}', "messages.0.content", "at least 1"),
        ('{"messages": [{"role": "user", "content": 42}]}', "messages.0.content", "valid string"),
        ('{"messages": []}', "messages", "at least 1"),
        ('{"text": "no prompt"}', "messages", "missing"),
        ('["a list"]', "<row>", "JSON object"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, line, field, fragment):
    p = write(tmp_path, [json.dumps({"prompt": "fine"}), line])
    with pytest.raises(InputError) as e:
        read_records(p, parse)
    assert e.value.line == 2
    assert e.value.field == field
    assert fragment in e.value.error
    assert str(p) in str(e.value) and ":2:" in str(e.value)


def test_skip_invalid_quarantines_rows_in_the_store(tmp_path):
    p = write(
        tmp_path,
        ['{"prompt": "a"}', "{bad", '{"messages": [{"role": "x", "content": "y"}]}', '{"prompt": "b"}'],
    )
    store = Store(tmp_path / "run")
    recs = read_records(
        p,
        parse,
        skip_invalid=True,
        on_bad=lambda b: store.quarantine(b.path, b.line, b.field, b.error, b.raw),
    )
    assert [r.messages[0].content for r in recs] == ["a", "b"]
    q = store.quarantined()
    assert [(x["line"], x["field"]) for x in q] == [(2, "<json>"), (3, "messages.0.role")]


def test_duplicate_ids_are_an_error(tmp_path):
    p = write(tmp_path, ['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}'])
    with pytest.raises(InputError, match="duplicate id"):
        check_unique_ids(read_records(p, parse), p)


def test_preference_record_ranking_rules():
    base = {"id": "p", "prompt": [{"role": "user", "content": "q"}]}
    ok = PreferenceRecord.model_validate(
        {
            **base,
            "responses": [
                {"content": "e", "label": "edited"},
                {"content": "c", "label": "chosen"},
                {"content": "r", "label": "rejected"},
            ],
            "strength": "better",
        }
    )
    assert ok.chosen.content == "c" and ok.by_label("edited").content == "e"
    with pytest.raises(ValidationError, match="ranked"):
        PreferenceRecord.model_validate(
            {
                **base,
                "responses": [{"content": "r", "label": "rejected"}, {"content": "c", "label": "chosen"}],
            }
        )
    with pytest.raises(ValidationError, match="differ"):
        PreferenceRecord.model_validate(
            {
                **base,
                "responses": [
                    {"content": "same", "label": "chosen"},
                    {"content": "same", "label": "rejected"},
                ],
            }
        )
    with pytest.raises(ValidationError):
        PreferenceRecord.model_validate(
            {
                **base,
                "responses": [{"content": "c", "label": "chosen"}, {"content": "r", "label": "rejected"}],
                "strength": "much_better",
            }
        )


def test_verdicts_decide_kept():
    r = SFTRecord(id="a", messages=[{"role": "user", "content": "q"}])
    r.keep("clean")
    assert r.kept
    r.reject("judge", "judge_unparseable")
    assert not r.kept and r.verdicts[-1].reason == "judge_unparseable"
