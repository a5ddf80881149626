"""Concepts: the people, pets and things a user taught the app (registry, heads, detection)."""
