"""LiveKit RTC sessions: connect, publish the mic, play and record remote audio."""
