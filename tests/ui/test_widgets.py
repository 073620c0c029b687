"""The dumb widgets: transcript (replace partials, follow unless scrolled up, search),
summary editor (edits become a card marked edited), level meter."""

from __future__ import annotations

from typing import Any

import pytest

from softphone.domain.summary import SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.errors import ValidationError
from softphone.ui.widgets.level_meter import LevelMeter
from softphone.ui.widgets.summary_card import SummaryCardEditor, SummaryCardView
from softphone.ui.widgets.transcript_view import TranscriptView

pytestmark = pytest.mark.ui


def test_transcript_replaces_partials_follows_unless_scrolled_up_and_searches(
    qtbot: Any,
) -> None:
    view = TranscriptView()
    qtbot.addWidget(view)
    view.resize(400, 200)
    view.show()
    view.add_segment(
        TranscriptSegment("caller", 0.0, 1.0, "my order", final=False, segment_id="s1")
    )
    view.add_segment(
        TranscriptSegment("caller", 0.0, 1.5, "my order 4571 is late", segment_id="s1")
    )
    assert len(view.segments()) == 1 and view.segments()[0].final
    for i in range(60):
        view.add_segment(TranscriptSegment("agent", 2.0 + i, 3.0 + i, f"line {i}"))
    bar = view.text.verticalScrollBar()
    assert bar.maximum() > 0 and bar.value() == bar.maximum(), "follows new text"
    bar.setValue(0)  # the user scrolls up to read
    view.add_segment(TranscriptSegment("agent", 70.0, 71.0, "one more"))
    assert bar.value() == 0, "does not jump while the user reads"
    view.search.setText("4571")
    assert view.matches.text() == "1 found"
    assert view.text.textCursor().selectedText() == "4571"


def test_summary_editor_round_trip_and_edits_are_marked(qtbot: Any) -> None:
    card = SummaryCard(
        reason="double charge",
        key_facts=("order 4571",),
        open_items=("refund",),
        sentiment="negative",
        next_step="confirm refund",
    )
    editor = SummaryCardEditor()
    qtbot.addWidget(editor)
    editor.set_card(card)
    assert editor.card() == card, "unchanged fields give the same card"
    editor.facts.setPlainText("order 4571\n- amount 49.90 EUR\n\n")
    editor.sentiment.setCurrentText("neutral")
    edited = editor.card()
    assert edited.key_facts == ("order 4571", "amount 49.90 EUR")
    assert edited.sentiment == "neutral" and edited.source == "edited"
    view = SummaryCardView()
    qtbot.addWidget(view)
    view.set_card(edited)
    assert "amount 49.90 EUR" in view.toPlainText()
    with pytest.raises(ValidationError):
        SummaryCard.from_dict({"sentiment": "furious"})


def test_level_meter_clamps_and_describes_its_level(qtbot: Any) -> None:
    meter = LevelMeter("Microphone level")
    qtbot.addWidget(meter)
    meter.set_level(1.7)
    assert meter.level == 1.0
    assert meter.accessibleDescription() == "100 percent"
    meter.set_level(-1)
    assert meter.level == 0.0
    assert meter.accessibleName() == "Microphone level"
