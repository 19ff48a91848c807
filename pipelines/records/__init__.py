"""Records: assembling one, keys and splits, the run summary."""
