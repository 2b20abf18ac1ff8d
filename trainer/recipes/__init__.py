"""Runnable experiment recipes built on the trainer's public functions."""
