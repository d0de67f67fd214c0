"""Stage 2, training: batches, task sampling, weighting methods, checkpoints, distributed helpers
(libraries); the recipe (runner).
"""
