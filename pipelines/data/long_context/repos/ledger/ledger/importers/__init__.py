"""Readers of transactions kept in other formats."""
