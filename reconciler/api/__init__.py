"""Everything about the PracticeWriteback resource: the schema, spec values and defaults, validation, YAML loading, the CRD generator."""
