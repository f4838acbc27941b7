"""Projections of the log: pure reducers and the runtime that folds the stream into them."""
