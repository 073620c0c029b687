"""``python -m softphone``: the same as the ``softphone`` command."""

from __future__ import annotations

from softphone.app import main

if __name__ == "__main__":
    main()
