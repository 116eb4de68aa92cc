"""Transport-specific unit tests."""
