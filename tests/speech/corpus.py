"""The scripted test calls in ``tests/data/calls/`` and their rendering to speech.

Each call is JSON::

    {"id": "h01_card_blocked",
     "split": "tune" | "heldout",          # default "tune"
     "speakers": {"caller": {"identity": "caller-daniel", "voice": "en-gb-scotland+m2",
                             "speed": 160},  # words per minute, default 150
                  "agent": {...}},
     "noise": {"kind": "white" | "brown", "snr_db": 20, "seed": 3},   # optional
     "turns": [{"speaker": "agent", "text": "..."}, ...],
     "facts": ["Daniel Okafor", "48190273", ...],   # what a good card must contain
     "sentiment": "positive" | "neutral" | "negative" | "unknown",
     "agent_name": "Priya"}                         # optional: never a caller fact

The ``heldout`` split is never used to tune a pattern, prompt or threshold
(see ``docs/notes-speech.md``). :func:`render_call` speaks every turn with
espeak-ng (each speaker's voice and speed), caches each rendering under
``tests/.cache/speech/`` keyed by a hash of text, voice and speed, lays the
turns out on one timeline as one track per speaker (silence while the other
one talks), as a call recording would have them, and mixes in the call's
seeded noise. Also here: the text normalisation and word error rate used by
the tests and by ``bench/speech.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import wave
from pathlib import Path

import numpy as np

from softphone.domain.transcript import TranscriptSegment

ROOT = Path(__file__).resolve().parents[2]
CALLS_DIR = ROOT / "tests" / "data" / "calls"
CACHE_DIR = ROOT / "tests" / ".cache" / "speech"
SAMPLE_RATE = 48000
GAP_S = 0.8
ESPEAK_SPEED = 150
SPLITS = ("tune", "heldout")
NOISE_KINDS = ("white", "brown")


@dataclasses.dataclass(frozen=True)
class Turn:
    """One scripted turn."""

    role: str
    identity: str
    voice: str
    text: str
    speed: int = ESPEAK_SPEED


@dataclasses.dataclass(frozen=True)
class Noise:
    """Noise mixed into every track of a rendered call (seeded: the same every run)."""

    kind: str
    snr_db: float
    seed: int


@dataclasses.dataclass(frozen=True)
class Call:
    """One scripted call."""

    id: str
    identities: dict[str, str]  # role -> identity
    turns: tuple[Turn, ...]
    facts: tuple[str, ...]
    sentiment: str
    split: str = "tune"
    agent_name: str | None = None
    noise: Noise | None = None

    @property
    def caller_identity(self) -> str:
        """The caller's identity (the call registry knows it in a real call)."""
        return self.identities["caller"]

    @property
    def agent_identity(self) -> str:
        """The agent's identity."""
        return self.identities["agent"]

    def reference_segments(self) -> list[TranscriptSegment]:
        """The script as transcript segments (one per turn, 4 s apart)."""
        return [
            TranscriptSegment(t.identity, i * 4.0, i * 4.0 + 3.5, t.text, segment_id=f"ref-{i}")
            for i, t in enumerate(self.turns)
        ]

    def reference_text(self, identity: str) -> str:
        """Everything ``identity`` says, in order."""
        return " ".join(t.text for t in self.turns if t.identity == identity)


@dataclasses.dataclass(frozen=True)
class Utterance:
    """Where a turn landed on the rendered call's timeline."""

    identity: str
    start_s: float
    end_s: float
    text: str


@dataclasses.dataclass(frozen=True)
class RenderedCall:
    """A call as per-speaker 16-bit mono tracks at 48 kHz on one timeline."""

    call: Call
    tracks: dict[str, np.ndarray]
    utterances: tuple[Utterance, ...]
    duration_s: float


def _parse_call(path: Path) -> Call:
    data = json.loads(path.read_text(encoding="utf-8"))
    speakers = data["speakers"]
    if set(speakers) != {"caller", "agent"}:
        raise ValueError(f"{path.name}: speakers must be exactly caller and agent")
    split = data.get("split", "tune")
    if split not in SPLITS:
        raise ValueError(f"{path.name}: split must be one of {SPLITS}")
    noise = None
    if "noise" in data:
        n = data["noise"]
        if n["kind"] not in NOISE_KINDS:
            raise ValueError(f"{path.name}: noise kind must be one of {NOISE_KINDS}")
        noise = Noise(n["kind"], float(n["snr_db"]), int(n["seed"]))
    turns = tuple(
        Turn(
            t["speaker"],
            speakers[t["speaker"]]["identity"],
            speakers[t["speaker"]]["voice"],
            t["text"],
            int(speakers[t["speaker"]].get("speed", ESPEAK_SPEED)),
        )
        for t in data["turns"]
    )
    return Call(
        id=data["id"],
        identities={r: s["identity"] for r, s in speakers.items()},
        turns=turns,
        facts=tuple(data["facts"]),
        sentiment=data["sentiment"],
        split=split,
        agent_name=data.get("agent_name"),
        noise=noise,
    )


def load_calls(split: str | None = None) -> list[Call]:
    """The calls of the corpus in file-name order: all, or those of one ``split``."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    calls = [_parse_call(p) for p in sorted(CALLS_DIR.glob("*.json"))]
    return [c for c in calls if split is None or c.split == split]


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono 16-bit samples and the rate of a WAV file."""
    with wave.open(str(path), "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return data.reshape(-1, w.getnchannels())[:, 0].copy(), w.getframerate()


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono 16-bit samples as a WAV file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.asarray(samples, np.int16).tobytes())
    return path


def render_turn(text: str, voice: str, speed: int = ESPEAK_SPEED) -> np.ndarray:
    """``text`` spoken by espeak-ng with ``voice``, 48 kHz, leading/trailing silence trimmed.

    Cached by a hash of text, voice and speed, so each is rendered once per machine.
    """
    # "v2": sox's dither seeded (-R below); older files differ machine to machine.
    key = hashlib.sha256(f"v2|{voice}|{speed}|{text}".encode()).hexdigest()[:24]
    out = CACHE_DIR / f"{key}.wav"
    if not out.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        raw = out.with_suffix(".raw.wav")
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
            check=True,
            capture_output=True,
        )
        tmp = out.with_suffix(".tmp.wav")
        subprocess.run(
            # -R: sox's dither from a fixed seed, so every machine renders the
            # same samples (tiny.en's words turn on a couple of LSBs of dither).
            ["sox", "-R", str(raw), "-r", str(SAMPLE_RATE), "-b", "16", "-c", "1", str(tmp)],
            check=True,
            capture_output=True,
        )
        raw.unlink()
        samples, _ = read_wav(tmp)
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
        if loud.size:
            samples = samples[loud[0] : loud[-1] + 1]
        write_wav(tmp, samples)
        tmp.replace(out)
    return read_wav(out)[0]


def render_call(call: Call, *, gap_s: float = GAP_S) -> RenderedCall:
    """Speak the whole call: one track per speaker, turns one after another."""
    pieces: list[tuple[Turn, np.ndarray]] = [
        (t, render_turn(t.text, t.voice, t.speed)) for t in call.turns
    ]
    pos = int(gap_s * SAMPLE_RATE)
    utterances: list[Utterance] = []
    placed: list[tuple[str, int, np.ndarray]] = []
    for turn, audio in pieces:
        placed.append((turn.identity, pos, audio))
        utterances.append(
            Utterance(
                turn.identity,
                pos / SAMPLE_RATE,
                (pos + len(audio)) / SAMPLE_RATE,
                turn.text,
            )
        )
        pos += len(audio) + int(gap_s * SAMPLE_RATE)
    total = pos + SAMPLE_RATE  # one second of quiet at the end
    tracks = {ident: np.zeros(total, np.int16) for ident in call.identities.values()}
    for ident, start, audio in placed:
        tracks[ident][start : start + len(audio)] = audio
    if call.noise is not None and placed:
        speech = np.concatenate([a for _, _, a in placed]).astype(np.float64)
        level = float(np.sqrt(np.mean(speech**2)))
        for k, ident in enumerate(sorted(tracks)):
            noise = make_noise(call.noise, total, seed_offset=k)
            noise *= level / 10 ** (call.noise.snr_db / 20)
            mixed = tracks[ident].astype(np.float64) + noise
            tracks[ident] = np.clip(mixed, -32768, 32767).astype(np.int16)
    return RenderedCall(call, tracks, tuple(utterances), total / SAMPLE_RATE)


def make_noise(noise: Noise, n: int, *, seed_offset: int = 0) -> np.ndarray:
    """``n`` samples of unit-RMS noise of ``noise.kind``, from its seed.

    ``white`` is flat; ``brown`` falls 6 dB per octave (traffic, wind, a
    street), shaped in the frequency domain and cut below 20 Hz.
    """
    rng = np.random.default_rng(noise.seed + seed_offset)
    x = rng.standard_normal(n)
    if noise.kind == "brown":
        spectrum = np.fft.rfft(x)
        freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        spectrum /= np.maximum(freqs, 20.0)
        spectrum[freqs < 20.0] = 0
        x = np.fft.irfft(spectrum, n)
    rms = float(np.sqrt(np.mean(x**2))) or 1.0
    return np.asarray(x / rms, np.float64)


# ---- word error rate -------------------------------------------------------

_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "twentieth": 20, "thirtieth": 30,
}  # fmt: skip


# Short words that precede numbers in speech; other short letter groups before
# digits are spelled-out codes ("dc 5521" is "dc5521").
_KEEP_APART = {
    "is", "at", "to", "on", "in", "of", "by", "for", "and", "the", "are", "was", "be",
    "my", "me", "it", "a", "an", "or", "per", "ago", "i", "we", "you", "no", "all",
    "may", "mar", "jun", "jul", "aug", "oct", "nov", "dec", "jan", "feb", "apr", "sep",
}  # fmt: skip
_CONTRACTIONS = {
    "i'm": "i am", "it's": "it is", "that's": "that is", "there's": "there is",
    "what's": "what is", "let's": "let us", "you're": "you are", "we're": "we are",
    "they're": "they are", "i'll": "i will", "you'll": "you will", "we'll": "we will",
    "i've": "i have", "we've": "we have", "you've": "you have", "i'd": "i would",
    "don't": "do not", "doesn't": "does not", "didn't": "did not", "can't": "cannot",
    "won't": "will not", "isn't": "is not", "wasn't": "was not", "haven't": "have not",
    "alright": "all right", "ok": "okay",
}  # fmt: skip
_FILLERS = {"uh", "um", "hmm", "mm", "ah", "er"}


def normalize(text: str) -> list[str]:
    """Words for WER, in the manner of Whisper's English normaliser.

    Lower case, no punctuation, contractions expanded, numbers as digits,
    ``$5`` as ``5 dollars`` (``£``, ``€`` alike), ``3pm`` as ``3 pm``, ``dc 5521`` as ``dc5521``,
    e-mail addresses spelled out, fillers dropped; digit strings and codes
    compared character by character.
    """
    t = text.lower().replace("’", "'")
    t = re.sub(r"\$(\d+)\.(\d\d)\b", r"\1 dollars and \2 cents", t)
    t = re.sub(r"\$(\d+)", r"\1 dollars", t)
    # As Whisper's normaliser: "£15" is "15 pounds", "€75.50" is "75 euros and 50 cents".
    t = re.sub(r"£(\d+)\.(\d\d)\b", r"\1 pounds and \2 pence", t)
    t = re.sub(r"£(\d+)", r"\1 pounds", t)
    t = re.sub(r"€(\d+)\.(\d\d)\b", r"\1 euros and \2 cents", t)
    t = re.sub(r"€(\d+)", r"\1 euros", t)
    t = re.sub(r"(?<=\d),(?=\d{3})", "", t)
    t = re.sub(r"(\d+)(st|nd|rd|th)\b", r"\1", t)
    t = re.sub(r"\b(\d+)\s*([ap])\.?\s?m\b\.?", r"\1 \2m", t)
    t = re.sub(
        r"[\w.]+@[\w.]+\w",
        lambda m: m.group(0).replace("@", " at ").replace(".", " dot "),
        t,
    )
    t = re.sub(r"[a-z0-9'-]+", lambda m: _CONTRACTIONS.get(m.group(0), m.group(0)), t)
    t = t.replace("-", " ")
    t = re.sub(r"[^a-z0-9' ]+", " ", t)
    t = t.replace("'", "")
    t = re.sub(
        r"\b([a-z]{1,3}) (\d+)\b",
        lambda m: m.group(0) if m.group(1) in _KEEP_APART else m.group(1) + m.group(2),
        t,
    )
    words = [w for w in t.split() if w not in _FILLERS]
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in _ORDINALS:
            out.append(str(_ORDINALS[w]))
        elif w in _NUMBERS:
            value = _NUMBERS[w]
            if value >= 20 and i + 1 < len(words) and words[i + 1] in _NUMBERS:
                nxt = _NUMBERS[words[i + 1]]
                if nxt < 10:
                    value += nxt
                    i += 1
            elif value >= 20 and i + 1 < len(words) and words[i + 1] in _ORDINALS:
                value += _ORDINALS[words[i + 1]]
                i += 1
            out.append(str(value))
        else:
            out.append(w)
        i += 1
    # Digit strings and codes letter by letter: "nine nine three" (9 9 3) and
    # "993" are the same words, and a code is wrong by its wrong characters.
    return [ch for w in out for ch in (list(w) if any(c.isdigit() for c in w) else [w])]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(ref: str, hyp: str) -> float:
    """Word error rate of ``hyp`` against ``ref``."""
    r = normalize(ref)
    return edit_distance(r, normalize(hyp)) / max(1, len(r))


def fact_recall(facts: tuple[str, ...] | list[str], rendered_card: str) -> float:
    """Share of ``facts`` found in a card's text rendering.

    Both sides are normalised as for WER, so ``$49.99`` holds the fact
    ``49 dollars`` and ``March 3`` the fact ``March 3rd``.
    """
    text = f" {' '.join(normalize(rendered_card))} "
    return sum(f" {' '.join(normalize(f))} " in text for f in facts) / max(1, len(facts))
