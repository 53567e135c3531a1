"""Corpus download, GPT-2 tokenization into token shards, and batch loading."""
