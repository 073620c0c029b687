"""Local HTTP servers that follow third-party providers' published API contracts."""
