"""Conformance suites run against every transport and result store (assert rewriting is
registered in tests/conftest.py, before anything imports celeriac.testing)."""
