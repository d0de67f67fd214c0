"""Stage 1, the teacher: prompts, calibration, the answer cache and the teacher backends
(libraries); run and shard/merge (runners).
"""
