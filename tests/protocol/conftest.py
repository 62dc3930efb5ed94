"""Shared settings for the protocol tests.

The Hypothesis profile is registered here and applied per test (`PROFILE`
in `helpers`), not loaded globally, so it does not change other test suites.
"""

from hypothesis import settings

settings.register_profile(
    "nexus-protocol",
    derandomize=True,  # the same examples on every run and every machine
    database=None,
    deadline=None,
    max_examples=100,
)
