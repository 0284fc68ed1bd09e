"""Placeholder replaced below."""


def add_commands(sub) -> None:
    return None
