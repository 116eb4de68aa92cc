"""Public testing helpers: conformance suites that every transport and result store must pass."""
