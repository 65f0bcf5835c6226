"""Runnable examples of pgqueue (each one is run by the test suite)."""
