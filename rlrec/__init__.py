"""rlrec: reinforcement-learning recommenders that learn how users' interests migrate."""

__all__ = [
    "__version__",
]

__version__ = "0.1.0"
