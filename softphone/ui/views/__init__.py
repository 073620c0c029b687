"""Windows and panels per role; they may know the app (context, controllers)."""
