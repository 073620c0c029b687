"""Tests of speech: summarizers, STT providers, live transcription, recording, speech route."""
