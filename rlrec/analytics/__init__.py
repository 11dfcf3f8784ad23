"""Behaviour analytics: interest trends, migration drift, cross-sell and category demand."""
