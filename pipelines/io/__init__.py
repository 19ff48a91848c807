"""Where data comes from and goes: manifests, discovery, sources (files, gs://, DICOMweb), sinks, the output
commit, tokenizers."""
