"""The OpenAI-compatible API backend: online requests, the Batch API, answer parsing."""
