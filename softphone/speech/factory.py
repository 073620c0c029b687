"""Builds speech providers from :class:`~softphone.config.Settings` only.

Other layers call these and never name a provider class, so the choice of
provider stays a setting.
"""

from __future__ import annotations

from softphone.config import Settings
from softphone.speech.offline_summarizer import OfflineSummarizer
from softphone.speech.stt import BatchStt
from softphone.speech.summarizer import Summarizer


def make_summarizer(settings: Settings) -> Summarizer:
    """The configured summarizer (``summarizer`` setting), bounded by ``summary_timeout_s``.

    Raises:
        ConfigError: The openai summarizer is chosen but no API key is set.
    """
    if settings.summarizer == "openai":
        from softphone.speech.openai_summarizer import OpenAISummarizer

        return OpenAISummarizer(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            model=settings.summarizer_model,
            timeout_s=settings.summary_timeout_s,
        )
    return OfflineSummarizer(timeout_s=settings.summary_timeout_s)


def make_offline_summarizer(settings: Settings) -> OfflineSummarizer:
    """The offline summarizer, the fallback for every other one."""
    return OfflineSummarizer(timeout_s=max(settings.summary_timeout_s, 5.0))


def make_batch_stt(settings: Settings) -> BatchStt:
    """The configured batch speech-to-text provider (``stt_provider`` setting).

    Raises:
        ConfigError: A cloud provider is chosen but its API key is not set.
    """
    if settings.stt_provider == "assemblyai":
        from softphone.speech.assemblyai import AssemblyAIStt

        return AssemblyAIStt(
            api_key=settings.assemblyai_api_key, base_url=settings.assemblyai_base_url
        )
    if settings.stt_provider == "openai":
        from softphone.speech.openai_stt import OpenAIStt

        return OpenAIStt(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            model=settings.openai_stt_model,
        )
    from softphone.speech.local_stt import LocalStt

    return LocalStt(
        model=settings.stt_model,
        device=settings.stt_device,
        compute_type=settings.stt_compute_type,
        glossary=settings.speech_glossary_terms,
    )
