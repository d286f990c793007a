"""Test doubles, each named and documented as a fake."""
