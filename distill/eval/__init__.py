"""Stage 3, evaluation: metrics with bootstrap intervals, gates and the report (libraries); run and
speed (runners).
"""
