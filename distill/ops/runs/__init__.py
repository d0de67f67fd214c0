"""Scheduled runs: run folders, the lock, history, promotion, the teach → train → eval sequence."""
