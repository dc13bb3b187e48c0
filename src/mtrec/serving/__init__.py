"""Serving: raw feature values -> probabilities (predictor), batch scoring of files, and the HTTP app."""
