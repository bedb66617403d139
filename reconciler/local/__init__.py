"""The local adapter (`pmsctl up`): a folder of YAML files plays the API server; the terminal table."""
