"""``python -m softphone``: the same as the ``softphone`` command."""

from __future__ import annotations

if __name__ == "__main__":
    import multiprocessing

    # In the packaged app, a worker process (the summarizer's NER, spawned)
    # is this program started again: it runs the worker here and exits.
    multiprocessing.freeze_support()

    from softphone.app import main

    main()
