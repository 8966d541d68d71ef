"""Verifiable rewards: math answer matching and sandboxed code execution."""
