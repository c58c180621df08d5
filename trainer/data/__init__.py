"""Data stage: read rows, map formats to chat messages, render and mask them for training."""
