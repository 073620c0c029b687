"""FastAPI app serving services/ over HTTP, and the HTTP client for the app."""
