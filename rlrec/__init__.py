"""rlrec: reinforcement-learning recommenders that learn how users' interests migrate."""

__version__ = "0.1.0"
