"""The summary card: read-only view and an editor that yields a new card.

Both show who the caller is (the key facts labelled ``Caller ...``: name,
account, contact) apart from the other facts.
"""

from __future__ import annotations

import dataclasses

from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from softphone.domain.summary import CALLER_PREFIX, SENTIMENTS, SummaryCard, is_caller_fact


class SummaryCardView(QTextBrowser):
    """Renders a :class:`SummaryCard` as formatted text."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Call summary")
        self.setObjectName("summaryCard")
        self.card: SummaryCard | None = None
        self.setPlaceholderText("No summary yet.")

    def set_card(self, card: SummaryCard | None) -> None:
        """Show ``card`` (``None``: nothing)."""
        self.card = card
        if card is None:
            self.clear()
        else:
            self.setMarkdown(card.to_markdown())


def _lines(items: tuple[str, ...]) -> str:
    return "\n".join(items)


def _items(text: str) -> tuple[str, ...]:
    return tuple(x.strip().lstrip("-• ").strip() for x in text.splitlines() if x.strip())


def _as_caller_fact(item: str) -> str:
    """A line of the caller box as a caller fact: "Phone: 555" -> "Caller phone: 555"."""
    if is_caller_fact(item):
        return item
    label, sep, value = item.partition(":")
    if sep and label.strip() and " " not in label.strip() and value.strip():
        return f"{CALLER_PREFIX} {label.strip().lower()}: {value.strip()}"
    return f"{CALLER_PREFIX}: {item}"


class SummaryCardEditor(QWidget):
    """Edit every field of a card; :meth:`card` returns the edited card."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._base = SummaryCard()
        self._setup_ui()

    def _setup_ui(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.reason = QLineEdit()
        self.caller = QPlainTextEdit()
        self.facts = QPlainTextEdit()
        self.done = QPlainTextEdit()
        self.open_items = QPlainTextEdit()
        self.sentiment = QComboBox()
        self.sentiment.addItems(list(SENTIMENTS))
        self.next_step = QLineEdit()
        for label, w in (
            ("&Reason", self.reason),
            ("&Caller (name, account, contact)", self.caller),
            ("Key &facts (one per line)", self.facts),
            ("&Done", self.done),
            ("&Open items", self.open_items),
            ("&Sentiment", self.sentiment),
            ("&Next step", self.next_step),
        ):
            name = label.replace("&", "").split(" (")[0]
            w.setAccessibleName(f"Summary {name.lower()}")
            if isinstance(w, QPlainTextEdit):
                w.setTabChangesFocus(True)
                w.setMaximumHeight(70)
            lbl = QLabel(label)
            lbl.setBuddy(w)
            form.addRow(lbl, w)
        lay.addLayout(form)

    def set_card(self, card: SummaryCard) -> None:
        """Fill the fields from ``card``."""
        self._base = card
        self.reason.setText(card.reason)
        self.caller.setPlainText(_lines(card.caller_facts))
        self.facts.setPlainText(_lines(card.other_facts))
        self.done.setPlainText(_lines(card.actions_taken))
        self.open_items.setPlainText(_lines(card.open_items))
        self.sentiment.setCurrentText(card.sentiment)
        self.next_step.setText(card.next_step)

    def card(self) -> SummaryCard:
        """The card as edited (``source`` becomes ``edited`` when anything changed).

        Raises:
            ValidationError: A field is invalid.
        """
        edited = SummaryCard.from_dict(
            {
                "reason": self.reason.text(),
                "key_facts": [
                    *(_as_caller_fact(x) for x in _items(self.caller.toPlainText())),
                    *_items(self.facts.toPlainText()),
                ],
                "actions_taken": list(_items(self.done.toPlainText())),
                "open_items": list(_items(self.open_items.toPlainText())),
                "sentiment": self.sentiment.currentText(),
                "next_step": self.next_step.text(),
                "source": self._base.source,
                "fallback": self._base.fallback,
            }
        )
        if sorted(edited.key_facts) == sorted(self._base.key_facts):
            # Shown in two boxes, the facts come back grouped: the same facts are no edit.
            edited = dataclasses.replace(edited, key_facts=self._base.key_facts)
        if edited != self._base:
            edited = SummaryCard.from_dict({**edited.to_dict(), "source": "edited"})
        return edited
