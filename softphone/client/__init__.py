"""The workstation side, without Qt: lobby, caller mover, agent call, controllers, HTTP client.

Holds no LiveKit secret: tokens and commands come from the service.
"""
