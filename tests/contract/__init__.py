"""Conformance suites run against every transport and result store."""

import pytest

# the checks live in the package (reusable by other transports): show their failing values too
pytest.register_assert_rewrite("celeriac.testing")
