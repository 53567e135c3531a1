"""Hugging Face: GPT-2 weights in and out, hub access, the GPT-2 baselines, the tasks' pinned files."""
