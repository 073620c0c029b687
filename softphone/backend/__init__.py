"""FastAPI app serving server/ over HTTP (the backend; holds the LiveKit secret)."""
