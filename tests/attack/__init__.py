"""Tests of the attack package."""
