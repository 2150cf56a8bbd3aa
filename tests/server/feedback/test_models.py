from datetime import datetime, timezone

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, StatementError

from llmdoctor.server.feedback.models import Completion, Vote, VoteItem, guidance_key, prompt_key
from tests.server.feedback.rows import MESSAGES, completion, vote


def test_guidance_key_does_not_depend_on_doctor_order():
    terse, helpful = {"name": "terse", "beta": 1.5, "mode": "ratio"}, {"name": "helpful", "beta": 0.8}
    a = {"alpha": 1.0, "doctors": [terse, helpful]}
    b = {"doctors": [{**helpful, "mode": "product"}, terse]}
    assert guidance_key(a, None) == guidance_key(b, None) == "helpful@0.8+terse@1.5:ratio"


@pytest.mark.parametrize(("guidance", "adapter", "key"), [
    (None, None, "patient"),
    ({"alpha": 1, "doctors": []}, None, "patient"),
    ({"doctors": {"positivity": 2}}, None, "positivity@2"),  # the {name: beta} form
    ({"doctors": [{"name": "positivity", "beta": 2.0}, {"name": "terse", "beta": 0}]}, None, "positivity@2"),
    ({"alpha": 0.5, "doctors": [{"name": "positivity", "beta": 2}], "max_kl": 0.1, "explain": True}, None,
     "alpha=0.5,positivity@2,max_kl=0.1"),
    (None, "pirate", "adapter=pirate,patient"),
])
def test_guidance_key_names_the_setting(guidance, adapter, key):
    assert guidance_key(guidance, adapter) == key


def test_prompt_key_is_the_same_for_equal_messages_whatever_their_key_order():
    reordered = [{"content": MESSAGES[0]["content"], "role": "user"}]
    assert prompt_key(reordered) == prompt_key(MESSAGES) != prompt_key("Say something nice ☀")
    assert len(prompt_key(MESSAGES)) == 64


def test_completion_and_pairwise_vote_round_trip(database):
    chosen, rejected = completion(choice_index=0), completion(choice_index=1, output_text="Meh.", guidance=None,
                                                                 guidance_key="patient", finish_reason=None)
    with database.session() as session, session.begin():
        session.add_all([chosen, rejected])
        session.add(vote("pairwise", [chosen.id, rejected.id], annotator="ann", note="kinder",
                         idempotency_key="k1"))
    with database.read_session() as session:
        stored = session.scalars(select(Vote)).one()
        first = session.get(Completion, chosen.id)
        second = session.get(Completion, rejected.id)
        assert [item.completion_id for item in stored.items] == [chosen.id, rejected.id]  # chosen first
        assert (stored.kind, stored.annotator, stored.note, stored.source) == ("pairwise", "ann", "kinder", "log")
        assert first.prompt == MESSAGES and first.output_token_ids == [1, 22, 333]
        assert first.guidance == {"alpha": 1.0, "doctors": [{"name": "positivity", "beta": 2.0}]}
        assert first.sampling == {"temperature": 0.7, "seed": 3} and first.guidance_key == "positivity@2"
        assert second.guidance is None and second.finish_reason is None
        for moment in (stored.created_at, first.created_at, first.finished_at):
            assert moment.tzinfo is not None and moment.utcoffset().total_seconds() == 0
            assert abs((datetime.now(timezone.utc) - moment).total_seconds()) < 60


def test_vote_with_a_used_idempotency_key_is_refused(database):
    row = completion()
    with database.session() as session, session.begin():
        session.add(row)
        session.add(vote("tie", [row.id, row.id], idempotency_key="retry-1"))
    with pytest.raises(IntegrityError), database.session() as session, session.begin():
        session.add(vote("tie", [row.id, row.id], idempotency_key="retry-1"))
    with database.read_session() as session:
        assert session.scalar(select(func.count()).select_from(Vote)) == 1


def test_deleting_a_vote_deletes_its_items(database):
    rows = [completion(choice_index=i) for i in range(3)]
    with database.session() as session, session.begin():
        session.add_all(rows)
        session.add(vote("ranking", [r.id for r in rows]))
    with database.session() as session, session.begin():
        assert session.scalar(select(func.count()).select_from(VoteItem)) == 3
        session.execute(delete(Vote))  # SQL, not the ORM: the database's ON DELETE CASCADE does it
    with database.read_session() as session:
        assert session.scalar(select(func.count()).select_from(VoteItem)) == 0
        assert session.scalar(select(func.count()).select_from(Completion)) == 3


def test_completion_a_vote_names_cannot_be_deleted(database):
    row = completion()
    with database.session() as session, session.begin():
        session.add(row)
        session.add(vote("both_bad", [row.id, row.id]))
    with pytest.raises(IntegrityError), database.session() as session, session.begin():
        session.execute(delete(Completion))


def test_vote_naming_an_unknown_completion_is_refused(database):
    with pytest.raises(IntegrityError), database.session() as session, session.begin():
        session.add(vote("pairwise", ["cmpl-choice-missing", "cmpl-choice-missing-2"]))


def test_naive_datetime_is_refused(database):
    with pytest.raises(StatementError, match="naive datetime"), database.session() as session, session.begin():
        session.add(completion(created_at=datetime(2026, 1, 1)))
