"""Evaluation: rollouts, offline policy evaluation, ranking metrics, fidelity, reports."""
