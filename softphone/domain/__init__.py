"""Pure domain: state machines, value objects, validation. No asyncio, no SDKs."""
