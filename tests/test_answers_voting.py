"""Answer extraction and equivalence, the vote and its tie rule, the stopping rules."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refinegraph.tools.answers import (
    display,
    equivalent,
    extract_choice,
    extract_date,
    extract_number,
    extract_text,
    project,
    register_projection,
)
from refinegraph.tools.stopping import beta_posterior, dirichlet_posterior, posterior_check, window_check
from refinegraph.tools.voting import majority_vote

# Endings of real GSM8K completions (gold answers from the test set) and what they mean.
GSM8K_FORMATS = [
    ("Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day. The answer is 18.", "18"),
    ("So she makes $18.00 per day at the farmers' market.\n#### 18", "18"),
    ("It takes 2/2=1 bolt of white fiber\nSo the total amount of fabric is 2+1=3 bolts\n#### 3", "3"),
    ("The answer is $70,000.", "70000"),
    ("The profit is 200,000 - 130,000 = 70,000 dollars. The answer is 70000", "70000"),
    ("He runs 3*3*60 = 540 meters a week.\nThe answer is 540 meters.", "540"),
    ("Therefore the final answer is \\boxed{20}.", "20"),
    ("so x = \\boxed{\\frac{1}{2}} hmm, the answer is 0.5", "1/2"),
    ("The answer is 1/2.", "1/2"),
    ("Each costs 0.5 dollars. The answer is: 0.50", "1/2"),
    ("The answer is -3.", "-3"),
    ("The temperature dropped to −4 degrees. The answer is −4", "-4"),
    ("Answer: 1,200", "1200"),
    ("We get 5 + 7 = 12, then 12 * 3 = 36", "36"),
    ("The answer is 25%.", "25"),
    ("She has 3 apples and 2 pears. The answer is 5 fruits. Later she ate 1.", "5"),
    ("no numbers here at all", None),
]


@pytest.mark.parametrize(("text", "key"), GSM8K_FORMATS)
def test_numbers_in_real_gsm8k_formats(text, key):
    assert extract_number(text) == key


def test_equivalence_across_formats():
    assert equivalent("The answer is $18.00", "#### 18")
    assert equivalent("The answer is 0.5", "The answer is 1/2")
    assert equivalent("The answer is 1,000", "so 1000 in total. The answer is 1000.")
    assert not equivalent("The answer is 18", "The answer is 81")
    assert not equivalent("nothing", "nothing")  # no answer equals nothing


def test_display_writes_keys_as_users_do():
    assert display("18") == "18"
    assert display("1/2") == "0.5"
    assert display("-7/4") == "-1.75"
    assert display("1/3") == "1/3"
    assert display(None) is None
    assert display("(B)", "choice") == "(B)"


@given(st.fractions(min_value=-10**6, max_value=10**6, max_denominator=64))
@settings(max_examples=200)
def test_any_written_number_round_trips(value: Fraction):
    key = project(f"The answer is {display(str(value))}.")
    assert key is not None and Fraction(key) == value


@given(st.integers(min_value=0, max_value=10**9))
def test_thousands_separators_and_currency_do_not_matter(value: int):
    assert extract_number(f"The answer is ${value:,}.") == str(value)


def test_choices_dates_text():
    assert extract_choice("The answer is (C).") == "C"
    assert extract_choice("Answer: d") == "D"
    assert extract_choice("Between (A) and (B), I pick (B)") == "B"
    assert extract_choice("no letter here") is None
    assert extract_date("Yesterday was 12/31/1999, so today is 1/1/2000. So the answer is 01/01/2000.") == "01/01/2000"
    assert extract_date("on 2/3/2021") == "02/03/2021"
    assert extract_text("Thinking... The answer is The Eiffel Tower!") == "eiffel tower"
    assert extract_text("line one\nParis.\n") == "paris"


def test_users_register_their_own_projection():
    register_projection("yesno", lambda text: "yes" if "yes" in text.lower() else "no" if "no" in text.lower()
                        else None)
    assert project("Yes, clearly.", "yesno") == "yes"
    with pytest.raises(KeyError, match="unknown answer type"):
        project("x", "no-such-kind")


def test_vote_groups_weights_and_abstentions():
    outcome = majority_vote(["5", None, "7", "5", "7", "7"])
    assert [(g.key, g.members) for g in outcome.groups] == [("7", [2, 4, 5]), ("5", [0, 3])]
    assert outcome.abstained == [1]
    assert outcome.agreement == pytest.approx(3 / 6)
    weighted = majority_vote(["5", "7", "7"], weights=[0.9, 0.2, 0.3])
    assert weighted.winner.key == "5" and weighted.agreement == pytest.approx(0.9 / 1.4)
    assert majority_vote([None, None]).winner is None
    with pytest.raises(ValueError):
        majority_vote(["1"], weights=[1.0, 2.0])


@given(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=40))
def test_vote_winner_has_most_votes_and_ties_go_to_first_seen(keys):
    outcome = majority_vote(keys)
    answered = [k for k in keys if k is not None]
    if not answered:
        assert outcome.winner is None and outcome.agreement == 0
        return
    most = max(answered.count(k) for k in set(answered))
    assert outcome.winner.votes == most
    tied = [k for k in set(answered) if answered.count(k) == most]
    assert outcome.winner.key == min(tied, key=keys.index)
    assert outcome.tied == (len(tied) > 1)
    assert sum(g.votes for g in outcome.groups) + len(outcome.abstained) == len(keys)
    assert outcome.counts == sorted(outcome.counts, reverse=True)


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=20), st.randoms(use_true_random=False))
def test_vote_counts_do_not_depend_on_order(keys, rng: random.Random):
    shuffled = keys[:]
    rng.shuffle(shuffled)
    assert majority_vote(keys).counts == majority_vote(shuffled).counts


def _beta_tail_by_integration(a: int, b: int, steps: int = 20000) -> float:
    """P(Beta(a, b) > 1/2) by the midpoint rule: an independent check of the closed form."""
    norm = math.gamma(a + b) / (math.gamma(a) * math.gamma(b))
    width = 0.5 / steps
    return sum(norm * x ** (a - 1) * (1 - x) ** (b - 1) * width
               for x in (0.5 + (i + 0.5) * width for i in range(steps)))


@pytest.mark.parametrize(("top", "second"), [(0, 0), (1, 0), (3, 0), (4, 0), (5, 2), (8, 3), (2, 2)])
def test_beta_posterior_matches_integration(top, second):
    assert beta_posterior(top, second) == pytest.approx(_beta_tail_by_integration(top + 1, second + 1), abs=1e-6)


def test_beta_rule_thresholds():
    # 4 agreeing samples: 31/32 > 0.95 stops; 3: 15/16 < 0.95 goes on
    assert posterior_check([4], 0.95).stop and beta_posterior(4, 0) == 31 / 32
    assert not posterior_check([3], 0.95).stop
    assert not posterior_check([4, 3], 0.95).stop
    assert not posterior_check([], 0.95).stop
    with pytest.raises(ValueError):
        posterior_check([1], 0.95, "nope")


@given(st.integers(0, 30), st.integers(0, 30))
def test_beta_posterior_is_monotone_and_bounded(top, second):
    p = beta_posterior(top, second)
    assert 0 < p < 1
    assert beta_posterior(top + 1, second) > p
    assert beta_posterior(top, second + 1) < p
    if top == second:
        assert p == pytest.approx(0.5)


def test_dirichlet_posterior_is_deterministic_and_sensible():
    assert dirichlet_posterior([6, 1, 1]) == dirichlet_posterior([6, 1, 1])
    assert dirichlet_posterior([10, 1, 1]) > 0.95 > dirichlet_posterior([6, 1, 1]) > dirichlet_posterior([3, 2, 2])
    assert dirichlet_posterior([3, 3]) == pytest.approx(0.5, abs=0.03)


def test_esc_window_rule():
    assert window_check(["4", "4", "4"]).stop
    assert not window_check(["4", "4", "5"]).stop
    assert not window_check([None, None]).stop
    assert not window_check([]).stop


ROWS = st.lists(st.tuples(st.integers(-3, 3), st.sampled_from(["a", "b"])), max_size=3)


@given(st.lists(st.one_of(st.none(), ROWS), max_size=8))
def test_sql_votes_through_the_one_vote(outcomes):
    """The SQL vote is majority_vote over the results' keys (a failed execution abstains):
    the same groups, order, abstentions, agreement and tie as any answer vote."""
    from refinegraph.tools.sql import ExecResult, result_key, vote_on_results
    from refinegraph.tools.voting import VoteOutcome

    results = [ExecResult(sql=f"q{i}", error_class="execution", error="no such table") if rows is None
               else ExecResult(sql=f"q{i}", rows=rows) for i, rows in enumerate(outcomes)]
    sql_vote = vote_on_results(results)
    plain = majority_vote([None if rows is None else result_key(rows) for rows in outcomes])
    assert isinstance(sql_vote, VoteOutcome)
    assert sql_vote.as_event() == plain.as_event()
    assert sql_vote.abstained == [i for i, rows in enumerate(outcomes) if rows is None]
