"""Key facts: spoken numbers (text2num), named entities (spaCy's real model), the few patterns."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from softphone.speech.facts import (
    CallFacts,
    Turn,
    canonical_date,
    extract_call_facts,
    extract_facts,
    load_entity_model,
    sentences,
    spoken_to_digits,
)

if TYPE_CHECKING:
    from spacy.language import Language

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def nlp() -> Language:
    """The real NER pipeline (loaded once per process)."""
    return load_entity_model()


@pytest.mark.parametrize(
    ("spoken", "written"),
    [
        ("It's four eight one nine, zero two seven three.", "It's 48190273."),
        ("Sure, it's C K seven two nine one.", "Sure, it's CK7291."),
        ("My booking reference is Q X seven R two P.", "My booking reference is QX7R2P."),
        ("two hundred and fifteen dollars", "215 dollars"),
        ("one thousand two hundred and forty dollars", "1240 dollars"),
        ("on the fourteenth of June", "on the 14th of June"),
        ("The fourth of July, nineteen forty eight.", "The 4th of July, 1948."),
        ("five five five, three one four, two two nine zero", "5553142290"),
        ("We close at eight PM, or two PM on Sundays.", "We close at 8 PM, or 2 PM on Sundays."),
        ("Robert Chen. C H E N.", "Robert Chen. C H E N."),  # a spelled name is no code
        ("I have one question and no one helped.", "I have one question and no one helped."),
        ("The order was 58,213.", "The order was 58213."),  # as recognisers write it
        ("at two thirty in the afternoon", "at 2 30 in the afternoon"),  # a time, not an id
    ],
)
def test_spoken_numbers_become_digits(spoken: str, written: str) -> None:
    assert spoken_to_digits(spoken) == written


@pytest.mark.parametrize(
    ("text", "fact"),
    [
        ("Hi, my name is Maria Lopez and I need help.", "Caller: Maria Lopez"),
        ("The account number is 7730412.", "Caller account: 7730412"),
        ("It is order 30576.", "Order: 30576"),
        ("My customer number is 662,094.", "Caller customer: 662094"),
        ("The claim number in 88120.", "Claim: 88120"),  # "is" misheard as "in"
        ("I opened ticket 47315 for you.", "Ticket: 47315"),
        ("The tracking number is SP40917.", "Tracking: SP40917"),
        ("Your reference is DC5521.", "Reference: DC5521"),
        ("Your booking reference is DC 5521.", "Reference: DC5521"),  # as recognisers write it
        ("Your prescription number is RX5-5120.", "Prescription: RX55120"),
        ("It was 49 dollars and 99 cents.", "Amount: $49.99"),
        ("That is 7 pounds 99 a month.", "Amount: 7 pounds 99"),
        ("It cost $12.50 in total.", "Amount: $12.50"),
        ("Your last bill was estimated at three hundred and forty pounds.", "Amount: 340 pounds"),
        ("That was on March 3rd.", "Date: March 3rd"),
        ("It was flagged on the fourteenth of June.", "Date: June 14th"),
        ("Call me at 555-201-7788.", "Caller phone: 555-201-7788"),
        (
            "The new one is five five five, three one four, two two nine zero.",
            "Caller phone: 555-314-2290",
        ),
        ("My email is noah.miller@example.com.", "Caller email: noah.miller@example.com"),
        ("It is sarah dot kim at outlook dot com.", "Caller email: sarah.kim@outlook.com"),
        ("The credit card ending in four four zero one.", "Card: 4401"),
        ("Thank you for calling Bright Mobile.", "Organisation: Bright Mobile"),
    ],
)
def test_each_kind_of_fact_is_found(nlp: Language, text: str, fact: str) -> None:
    assert fact in extract_facts(text, nlp=nlp)


def test_the_agents_own_name_is_never_the_callers(nlp: Language) -> None:
    facts = extract_call_facts(
        [
            Turn("agent", "Northfield Bank, Priya speaking. Can I start with your full name?"),
            Turn("caller", "Daniel Okafor."),
            Turn("agent", "Thanks Daniel. And the account number?"),
            Turn("caller", "It's four eight one nine, zero two seven three."),
            Turn("agent", "I've unblocked the card."),
            Turn("caller", "Great, thanks Priya."),
        ],
        nlp=nlp,
    )
    assert facts.caller[:2] == ("Caller: Daniel Okafor", "Caller account: 48190273")
    assert "Priya" in facts.agent_names
    assert not any("Priya" in f for f in facts.all())


def test_a_name_the_caller_greets_is_the_agents(nlp: Language) -> None:
    facts = extract_call_facts(
        [
            Turn("agent", "Brightwave Energy, you're through to Holly."),
            Turn("caller", "Hi Holly, my name's Kevin Walsh."),
        ],
        nlp=nlp,
    )
    assert facts.caller == ("Caller: Kevin Walsh",)
    assert facts.agent_names == {"Holly"}
    assert not any("Holly" in f for f in facts.all())


def test_the_callers_own_introduction_wins_over_other_people_named(nlp: Language) -> None:
    facts = extract_call_facts(
        [
            Turn("agent", "Thank you for calling, Aisha speaking."),
            Turn(
                "caller",
                "Hello, this is Peter Brooks. The account is in my wife's name, Angela Brooks.",
            ),
        ],
        nlp=nlp,
    )
    assert facts.caller == ("Caller: Peter Brooks",)
    assert "Name: Angela Brooks" in facts.other


def test_names_known_beforehand_are_the_agents(nlp: Language) -> None:
    facts = extract_call_facts(
        [Turn("caller", "Oliver, this is Grace Adeyemi, Oliver told me to call back.")],
        nlp=nlp,
        agent_names=["Oliver"],
    )
    assert facts.caller == ("Caller: Grace Adeyemi",)


def test_a_bare_number_takes_its_kind_from_the_question(nlp: Language) -> None:
    facts = extract_call_facts(
        [
            Turn("agent", "Could you read me the serial number?"),
            Turn("caller", "Z T one nine eight."),
        ],
        nlp=nlp,
    )
    assert facts.other == ("Serial: ZT198",)


def test_without_the_model_the_patterns_still_work() -> None:
    facts = extract_call_facts(
        [
            Turn("agent", "Hello, my name is Tom."),
            Turn("caller", "This is Maria Lopez, order five eight two one three, 49 dollars."),
        ]
    )
    assert facts == CallFacts(
        caller=("Caller: Maria Lopez",),
        other=("Order: 58213", "Amount: 49 dollars"),
        agent_names=frozenset({"Tom"}),
    )


def test_facts_are_deduplicated_and_in_order(nlp: Language) -> None:
    facts = extract_facts("Order 58213 please. Yes, order 58213, from March 3rd.", nlp=nlp)
    assert facts == ["Order: 58213", "Date: March 3rd"]


def test_phone_numbers_are_not_mistaken_for_ids(nlp: Language) -> None:
    facts = extract_facts("My account number is 555-201-7788.", nlp=nlp)
    assert facts == ["Caller phone: 555-201-7788"]


def test_dates_are_written_month_first() -> None:
    assert canonical_date("the 2nd of April") == "April 2nd"
    assert canonical_date("Thursday the first of March") == "Thursday March 1st"
    assert canonical_date("March the 21st, 1960") == "March 21st, 1960"


def test_sentences_keep_decimals_and_addresses_whole() -> None:
    assert sentences("It was $49.99. Write to a.b@c.com! Ok?") == [
        "It was $49.99.",
        "Write to a.b@c.com!",
        "Ok?",
    ]


def test_no_facts_in_small_talk(nlp: Language) -> None:
    text = "Hello, how are you? I'm fine, thanks. I'm Calling about it. See you today."
    assert extract_facts(text, nlp=nlp) == []


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "   ",
        "♪ ♪",
        "@@ $ % ñ",
        "one two three four " * 50,
        "one two three " * 20000,  # an hour-long run-on (text2num alone took 40 s on it)
        "Mr Smith " * 30000,
        "x" * 1_200_000,  # longer than the NER model accepts at once
        "A B C D E F 1",
        "ZZ" * 5000,
    ],
)
def test_odd_input_never_raises(nlp: Language, junk: str) -> None:
    facts = extract_call_facts([Turn("caller", junk), Turn("agent", junk)], nlp=nlp)
    assert isinstance(facts, CallFacts)
