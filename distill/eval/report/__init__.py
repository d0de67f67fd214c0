"""The report: markdown, self-contained HTML, figures."""
