"""The per-profile settings dialog; API keys go to the OS keychain, never to files."""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from softphone.config import FIELDS, KEYCHAIN_SERVICE, Settings, save_settings
from softphone.errors import ConfigError
from softphone.ui.widgets.message_bar import MessageBar

log = logging.getLogger(__name__)

# (field, label, kind, choices)
_FIELDS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("livekit_url", "LiveKit &URL (empty: embedded)", "text", ()),
    ("livekit_api_key", "LiveKit API &key", "text", ()),
    ("backend_url", "&Backend URL(s) (empty: embedded)", "text", ()),
    ("stt_provider", "&STT provider", "choice", ("local", "assemblyai", "openai")),
    ("stt_model", "STT &model", "text", ()),
    ("summarizer", "Summari&zer", "choice", ("offline", "openai")),
    ("openai_base_url", "OpenAI-compatible base U&RL", "text", ()),
    ("summarizer_model", "Summarizer mo&del", "text", ()),
    ("speech_glossary", "Speech g&lossary (names, commas)", "text", ()),
    ("offer_timeout_s", "&Offer timeout (s)", "seconds", ()),
    ("recordings_dir", "Recording &folder (empty: profile)", "text", ()),
    ("theme", "&Theme", "choice", ("light", "dark")),
    ("echo_cancellation", "E&cho cancellation", "switch", ()),
    ("noise_suppression", "&Noise suppression", "switch", ()),
    ("high_pass", "&High-pass filter", "switch", ()),
    ("auto_gain", "Automatic &gain", "switch", ()),
)
# What an empty text field would take, where the label cannot say it all.
_PLACEHOLDERS = {"backend_url": "a URL, or several separated by commas"}
_SECRETS: tuple[tuple[str, str], ...] = (
    ("backend_api_key", "Backend API key"),
    ("openai_api_key", "OpenAI API key"),
    ("assemblyai_api_key", "AssemblyAI API key"),
)


def store_secret(profile: str, name: str, value: str) -> None:
    """Put an API key into the OS keychain.

    Raises:
        ConfigError: There is no usable keychain.
    """
    try:
        import keyring

        keyring.set_password(KEYCHAIN_SERVICE, f"{profile}/{name}", value)
    except Exception as exc:
        raise ConfigError(
            "no OS keychain is available to store the key; set it in the environment instead"
        ) from exc


class SettingsDialog(QDialog):
    """Edit the settings of one profile; invalid values are refused with a message.

    Args:
        settings: The profile's current settings.

    Attributes:
        saved: The settings after a successful save (``None`` before).
    """

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.saved: Settings | None = None
        self.editors: dict[str, QWidget] = {}
        self._setup_ui()

    def _setup_ui(self) -> None:
        self.setWindowTitle(f"Settings — profile {self.settings.profile}")
        self.setMinimumWidth(560)
        lay = QVBoxLayout(self)
        self.messages = MessageBar()
        lay.addWidget(self.messages)
        form = QFormLayout()
        for name, label, kind, choices in _FIELDS:
            value = getattr(self.settings, name)
            editor: QWidget
            if kind == "choice":
                combo = QComboBox()
                combo.addItems(list(choices))
                combo.setCurrentText(str(value))
                editor = combo
            elif kind == "switch":
                check = QCheckBox("on")
                check.setChecked(bool(value))
                editor = check
            elif kind == "seconds":
                spin = QDoubleSpinBox()
                spin.setRange(0.0, 3600.0)
                spin.setDecimals(1)
                spin.setValue(float(value))
                editor = spin
            else:
                text = "" if str(value) in ("", ".") else str(value)
                line = QLineEdit(text)
                line.setPlaceholderText(_PLACEHOLDERS.get(name, ""))
                editor = line
            editor.setToolTip(FIELDS[name].metadata["help"])
            editor.setAccessibleName(label.replace("&", "").split(" (")[0])
            lbl = QLabel(label)
            lbl.setBuddy(editor)
            form.addRow(lbl, editor)
            self.editors[name] = editor
        for name, label in _SECRETS:
            edit = QLineEdit()
            edit.setEchoMode(QLineEdit.EchoMode.Password)
            is_set = getattr(self.settings, name) is not None
            # Never shown after entry: the field only says whether a key is set.
            edit.setPlaceholderText("set (type to replace)" if is_set else "not set")
            edit.setAccessibleName(label)
            form.addRow(QLabel(label), edit)
            self.editors[name] = edit
        lay.addLayout(form)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self._on_save)
        buttons.rejected.connect(self.reject)
        self.save_btn = buttons.button(QDialogButtonBox.StandardButton.Save)
        self.save_btn.setAccessibleName("Save settings")
        lay.addWidget(buttons)

    def values(self) -> dict[str, Any]:
        """The non-secret values as entered."""
        out: dict[str, Any] = {}
        for name, *_rest in _FIELDS:
            w = self.editors[name]
            if isinstance(w, QComboBox):
                out[name] = w.currentText()
            elif isinstance(w, QCheckBox):
                out[name] = w.isChecked()
            elif isinstance(w, QDoubleSpinBox):
                out[name] = w.value()
            elif isinstance(w, QLineEdit):
                out[name] = w.text().strip()
        return out

    def _on_save(self) -> None:
        try:
            self.saved = save_settings(self.settings, self.values())
            for name, label in _SECRETS:
                edit = self.editors[name]
                assert isinstance(edit, QLineEdit)
                if edit.text():
                    store_secret(self.settings.profile, name, edit.text())
                    edit.clear()
                    edit.setPlaceholderText("set (type to replace)")
                    log.info("api key stored in the keychain", extra={"key": label})
        except ConfigError as exc:
            self.messages.show_message(exc.message, "error")
            return
        self.accept()
