"""distill export: one file per artifact kind, checked against the student."""
