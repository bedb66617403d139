"""Review of configuration changes: the semantic diff and the git reader."""
