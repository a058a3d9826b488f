"""`bench spider --sample N --seed S`: a fixed, seeded draw that covers every database."""

from refinegraph.bench.spider import Question, sample_questions


def _questions() -> list[Question]:
    counts = {"big": 50, "mid": 10, "small": 2, "tiny": 1}
    out, index = [], 0
    for db, n in counts.items():
        for _ in range(n):
            out.append(Question(index, db, f"q{index}", "SELECT 1", f"{db}.sqlite"))
            index += 1
    return out


def test_sample_covers_every_database_and_keeps_the_order():
    chosen = sample_questions(_questions(), 8, seed=3)
    assert len(chosen) == 8
    assert {q.db_id for q in chosen} == {"big", "mid", "small", "tiny"}
    assert [q.index for q in chosen] == sorted(q.index for q in chosen)
    assert len({q.index for q in chosen}) == 8


def test_same_seed_same_sample_other_seed_other_sample():
    first = [q.index for q in sample_questions(_questions(), 10, seed=1)]
    assert first == [q.index for q in sample_questions(_questions(), 10, seed=1)]
    assert first != [q.index for q in sample_questions(_questions(), 10, seed=2)]


def test_sample_smaller_than_the_databases_takes_one_each_from_some():
    chosen = sample_questions(_questions(), 2, seed=0)
    assert len(chosen) == 2 and len({q.db_id for q in chosen}) == 2


def test_sample_of_everything_is_everything():
    assert len(sample_questions(_questions(), 100, seed=0)) == 63
