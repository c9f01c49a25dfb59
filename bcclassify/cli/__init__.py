"""The command line, ``python -m bcclassify``.

``main`` builds the parser and turns what a command raises into an exit status; each command
group has its own module (``add_<command>`` declares its options, ``run_<command>`` runs it);
``common`` holds the exit statuses, the usage error and model loading; ``from_config`` generates
options from a configuration dataclass (``train``, ``adapt``).
"""

__all__ = [
    "adapt",
    "api",
    "bench",
    "common",
    "evaluate",
    "explain",
    "from_config",
    "main",
    "models",
    "predict",
    "train",
    "users",
]
