"""Dataset definitions: synthetic generators (the embedded default) and loaders for external files."""
