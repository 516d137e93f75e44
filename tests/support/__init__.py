"""Test support (never installed): fixtures, test doubles, harnesses and embedded test servers."""
