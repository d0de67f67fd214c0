"""The base every stage builds on: errors, the config schema and loader, the run-folder layout,
data reading, manifests, bundled assets, devices and tensor helpers. Imports nothing else of
distill.
"""
