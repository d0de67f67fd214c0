"""Shipping a trained student: an HTTP server and exports plain transformers loads."""
