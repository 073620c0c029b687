"""The service side: holds the LiveKit secret (call registry, orchestrator, room admin,
token minter, agent directory). Never imported by client/ or ui/."""
