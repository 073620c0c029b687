"""Speech: STT engines, live transcription and summarizers, one module per provider."""
