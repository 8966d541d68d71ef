"""Answer extraction and the GSM8K reward on real-looking model outputs."""

import pytest

from gbmpo_jax.tasks import data
from gbmpo_jax.tasks.rewards.math import extract_answer, gsm8k_reward, normalise_gold, numbers_match

# (completion, expected extraction); None = no number at all.
EXTRACT_CASES = [
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether 48+24 = 72 clips.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("So the total is $1,234.50.\n#### $1,234.50", "1234.50"),
    ("#### -3", "-3"),
    ("The temperature dropped to -12 degrees.\n#### -12", "-12"),
    ("Reasoning...\n#### 18\n\nI hope this helps!", "18"),
    ("First #### 5 was a typo.\nCorrected:\n#### 6", "6"),
    ("#### The answer is 42", "42"),
    ("She has \\boxed{18} eggs left.", "18"),
    ("Thus the answer is $\\boxed{1,000}$.", "1000"),
    ("\\boxed{\\$18.00}", "18.00"),
    ("\\boxed{\\frac{3}{4}}", "3/4"),
    ("\\boxed{\\dfrac{7}{2}} hours", "7/2"),
    ("Final: \\boxed{x = 5}", "5"),
    ("\\boxed{12\\%}", "12"),
    ("\\boxed{20} then later \\boxed{25}", "25"),
    ("\\boxed{\\text{(A) } 9}", "9"),
    ("The answer is 42.", "42"),
    ("The answer is: $18.", "18"),
    ("The final answer is 3,600 dollars.", "3600"),
    ("**Answer:** 64", "64"),
    ("Answer: -7.5", "-7.5"),
    ("The answer is 42. Check: 42 - 2 = 40.", "42"),
    ("So the final answer is 1/2 of the pie.", "1/2"),
    ("He answered 3 questions and got 10 points.", "10"),
    ("He pays 5 * $3 = $15 for apples and $2 for bread, so $17 total.", "17"),
    ("The discount is 25%.", "25"),
    ("She needs 2.5 liters.", "2.5"),
    ("It takes 0.75 hours.", "0.75"),
    ("It costs .5 dollars.", ".5"),
    ("He ran 3 km, then 4 km, for a total of 7 km.", "7"),
    ("Revenue rose from $2,500,000 to $3,000,000.", "3000000"),
    ("The balance is \u22125 dollars.", "-5"),
    ("Temperature: -40 degrees", "-40"),
    ("The difference is 10-5 = 5", "5"),
    ("We get 100 - 40 = 60 apples.", "60"),
    ("Step 1. Add them.\nStep 2. Done: 9", "9"),
    ("There are 3 boxes with 12 each, 36 in total.", "36"),
    ("It is 1/4 of 20, which is 5", "5"),
    ("Each gets 3/4 cup", "3/4"),
    ("The ratio is 1,2,3 in order", "3"),
    ("I'm not sure how to solve this.", None),
    ("", None),
    ("x2 and y3 are variables", None),
    ("Total = $ 45", "45"),
    ("so John has **15** marbles.", "15"),
    ("The answer is +8", "8"),
    ("Follow the steps:\n\n1. Calculate ", "1"),
    ("Costs:\n$\n5 each", "5"),
    ("It is 3 / 4 of the cake", "3/4"),
]


@pytest.mark.parametrize("text, expected", EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# (completion, gold, reward)
REWARD_CASES = [
    ("... #### 72", "72", 1.0),
    ("... #### 72.0", "72", 1.0),
    ("... #### 72.00001", "72", 1.0),  # within rel 1e-4
    ("... #### 72.1", "72", 0.0),
    ("The answer is $1,000.", "1,000", 1.0),
    ("The answer is 1000", "1000", 1.0),
    ("The answer is 0.5", "1/2", 1.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{-3}", "-3", 1.0),
    ("\\boxed{3}", "-3", 0.0),
    ("The answer is 0", "0", 1.0),
    ("The answer is 0.001", "0", 0.0),
    ("I don't know", "5", 0.0),
    ("Answer: 50%", "50", 1.0),
    ("The answer is 1/0", "5", 0.0),
    ("First 5 then #### 6", "Natalia ... 48+24 = 72 clips.\n#### 6", 1.0),
]


@pytest.mark.parametrize("completion, gold, reward", REWARD_CASES)
def test_gsm8k_reward(completion, gold, reward):
    assert gsm8k_reward(completion, gold) == reward


def test_gold_answers_extract_to_themselves():
    rows = data.read_rows(data.BUNDLED_DIR / "gsm8k" / "test.jsonl.gz")
    assert len(rows) == 1319
    for row in rows:
        gold = row["answer"].split("####")[-1].strip()
        got = extract_answer(f"Let me think step by step. ... #### {gold}")
        assert got == gold.replace(",", ""), (gold, got)
        assert gsm8k_reward(f"The answer is {gold}.", gold) == 1.0


def test_numbers_match_tolerance_is_relative():
    assert numbers_match("100010", "100000")
    assert not numbers_match("100011", "100000")
    assert not numbers_match(None, "3")


def test_bad_gold_names_the_fix():
    with pytest.raises(ValueError, match="####"):
        normalise_gold("no number here")
    with pytest.raises(TypeError, match="str"):
        extract_answer(None)
