"""Key-fact patterns of the offline summarizer."""

from __future__ import annotations

import pytest

from softphone.speech.facts import extract_facts, sentences

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "fact"),
    [
        ("Hi, my name is Maria Lopez and I need help.", "Name: Maria Lopez"),
        ("This is Noah Miller.", "Name: Noah Miller"),
        ("The account number is 7730412.", "Account: 7730412"),
        ("It is order 30576.", "Order: 30576"),
        ("My customer number is 662,094.", "Customer: 662094"),  # as recognisers write it
        ("The claim number in 88120.", "Claim: 88120"),  # "is" misheard as "in"
        ("I opened ticket 47315 for you.", "Ticket: 47315"),
        ("The tracking number is SP40917.", "Tracking: SP40917"),
        ("Your reference is DC5521.", "Reference: DC5521"),
        ("It was 49 dollars and 99 cents.", "Amount: 49 dollars"),
        ("It cost $12.50 in total.", "Amount: $12.50"),
        ("That was on March 3rd.", "Date: March 3rd"),
        ("Delivered on 14 October 2024.", "Date: 14 October 2024"),
        ("Call me at 555-201-7788.", "Phone: 555-201-7788"),
        ("My email is noah.miller@example.com.", "Email: noah.miller@example.com"),
        ("It is jane at example dot com.", "Email: jane@example.com"),
    ],
)
def test_each_kind_of_fact_is_found(text: str, fact: str) -> None:
    assert fact in extract_facts(text)


def test_facts_are_deduplicated_and_in_order() -> None:
    facts = extract_facts("Order 58213 please. Yes, order 58213, from March 3rd.")
    assert facts == ["Order: 58213", "Date: March 3rd"]


def test_phone_numbers_are_not_mistaken_for_ids() -> None:
    facts = extract_facts("My account number is 555-201-7788.")
    assert facts == ["Phone: 555-201-7788"]


def test_sentences_keep_decimals_and_addresses_whole() -> None:
    assert sentences("It was $49.99. Write to a.b@c.com! Ok?") == [
        "It was $49.99.",
        "Write to a.b@c.com!",
        "Ok?",
    ]


def test_no_facts_in_small_talk() -> None:
    assert extract_facts("Hello, how are you? I'm fine, thanks. I'm Calling about it.") == []
