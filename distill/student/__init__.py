"""The student model: spec, shared encoder with task heads, sharing variants, summarizers, saving
and loading.
"""
