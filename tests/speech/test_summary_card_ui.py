"""The summary card widgets show who the caller is apart from the other facts."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from softphone.domain.summary import SummaryCard
from softphone.ui.widgets.summary_card import SummaryCardEditor, SummaryCardView

pytestmark = pytest.mark.ui

CARD = SummaryCard(
    reason="My debit card got declined.",
    key_facts=(
        "Caller: Daniel Okafor",
        "Caller account: 48190273",
        "Amount: 215 dollars",
        "Date: June 14th",
    ),
    actions_taken=("I've unblocked the card.",),
    sentiment="positive",
    next_step="Confirm the caller is satisfied with what was done and close the call.",
)


def test_the_caller_has_a_section_of_their_own(qtbot: Any) -> None:
    view = SummaryCardView()
    qtbot.addWidget(view)
    view.set_card(CARD)
    text = view.toPlainText()
    assert text.index("Caller") < text.index("Daniel Okafor") < text.index("Key facts")
    assert text.index("Key facts") < text.index("215 dollars")
    assert CARD.caller_facts == ("Caller: Daniel Okafor", "Caller account: 48190273")
    # Under the Caller heading, without the prefix.
    assert "Caller:\n  - Daniel Okafor\n  - Account: 48190273\n" in CARD.to_text()
    assert "- Daniel Okafor\n- Account: 48190273\n" in CARD.to_markdown()


def test_editor_keeps_caller_facts_apart_and_labels_new_ones(qtbot: Any) -> None:
    editor = SummaryCardEditor()
    qtbot.addWidget(editor)
    editor.set_card(CARD)
    assert editor.caller.toPlainText() == "Caller: Daniel Okafor\nCaller account: 48190273"
    assert editor.facts.toPlainText() == "Amount: 215 dollars\nDate: June 14th"
    assert editor.card() == CARD, "nothing edited: the same card"
    editor.caller.setPlainText("Caller: Daniel Okafor\nPhone: 555-314-2290\nprefers e-mail")
    edited = editor.card()
    assert edited.source == "edited"
    assert edited.caller_facts == (
        "Caller: Daniel Okafor",
        "Caller phone: 555-314-2290",
        "Caller: prefers e-mail",
    )
    assert edited.other_facts == ("Amount: 215 dollars", "Date: June 14th")
