"""Small shared helpers (no celeriac layers above them)."""
