"""Agents: PPO around the pretrained encoder, and baseline policies."""
