"""Operations over whole pipelines: scheduled runs (lock, history, promotion) and ablations."""
